//! What the engine learned about one stream, and how it is printed.

use crate::flow::{FlowMeta, Proto};
use crate::output::{Map, Value};

use super::EngineConfig;

/// One JA4X line: the fingerprint, its raw form and the name fields the reference prints.
#[derive(Debug, Clone, Default)]
pub struct CertPrint {
    pub ja4x: String,
    pub ja4x_r: String,
    pub names: Vec<(String, String)>,
}

/// A fingerprint string with its raw form, and the packet number it came from.
#[derive(Debug, Clone, Default)]
pub struct Print {
    pub hashed: String,
    pub raw: String,
    pub pkt: u64,
}

/// SSH extras the reference prints next to JA4SSH.
#[derive(Debug, Clone, Default)]
pub struct SshExtrasOut {
    pub hassh: Option<String>,
    pub hassh_server: Option<String>,
    pub ssh_protocol_client: Option<String>,
    pub ssh_protocol_server: Option<String>,
    pub encryption_algorithm: Option<String>,
}

/// Everything computed for one stream.
#[derive(Debug, Clone, Default)]
pub struct Fingerprints {
    pub ja4t: Option<Print>,
    pub ja4ts: Option<Print>,
    pub tls_server_name: Option<String>,
    pub ja4: Option<Print>,
    /// The resumption-stable JA4 of the same ClientHello (reported on the uplink, not in the
    /// record).
    pub ja4_stable: Option<String>,
    pub ja4s: Option<Print>,
    /// One entry per Certificate message: packet number and the certificates in it.
    pub certs: Vec<(u64, Vec<CertPrint>)>,
    pub ja4l_c: Option<String>,
    pub ja4l_s: Option<String>,
    pub http: Vec<Print>,
    pub ja4ssh: Vec<String>,
    pub ssh_extras: Option<SshExtrasOut>,
    pub ja4d: Vec<Print>,
}

impl Fingerprints {
    /// True when nothing was computed: such streams are not printed.
    pub fn is_empty(&self) -> bool {
        self.ja4t.is_none()
            && self.ja4ts.is_none()
            && self.ja4.is_none()
            && self.ja4s.is_none()
            && self.certs.is_empty()
            && self.ja4l_c.is_none()
            && self.http.is_empty()
            && self.ja4ssh.is_empty()
            && self.ssh_extras.is_none()
            && self.ja4d.is_empty()
    }

    /// The record in the reference tool's field order, HaIS-only fields (`ja4ts`, `ja4d`)
    /// placed next to their relatives.
    pub fn to_record(&self, meta: &FlowMeta, cfg: &EngineConfig) -> Map {
        let o = cfg.original_order;
        let mut m = Map::new();
        m.push("stream", meta.stream);
        m.push("transport", meta.key.proto.as_str());
        m.push("src", meta.first_src.ip.to_string());
        m.push("dst", meta.first_dst.ip.to_string());
        m.push("src_port", meta.first_src.port);
        m.push("dst_port", meta.first_dst.port);
        if meta.key.proto == Proto::Tcp {
            if let Some(p) = &self.ja4t {
                m.push("ja4t", p.hashed.clone());
                if cfg.with_packet_numbers {
                    m.push("pkt_ja4t", p.pkt);
                }
            }
            if let Some(p) = &self.ja4ts {
                m.push("ja4ts", p.hashed.clone());
                if cfg.with_packet_numbers {
                    m.push("pkt_ja4ts", p.pkt);
                }
            }
        }
        m.push_opt("tls_server_name", self.tls_server_name.clone());
        if let Some(p) = &self.ja4 {
            if cfg.with_packet_numbers {
                m.push("pkt_ja4", p.pkt);
            }
            m.push(if o { "ja4_o" } else { "ja4" }, p.hashed.clone());
            if cfg.with_raw {
                m.push(if o { "ja4_ro" } else { "ja4_r" }, p.raw.clone());
            }
        }
        if let Some(p) = &self.ja4s {
            if cfg.with_packet_numbers {
                m.push("pkt_ja4s", p.pkt);
            }
            m.push("ja4s", p.hashed.clone());
            if cfg.with_raw {
                m.push("ja4s_r", p.raw.clone());
            }
        }
        if !self.certs.is_empty() {
            let groups = self
                .certs
                .iter()
                .map(|(pkt, certs)| {
                    let mut g = Map::new();
                    if cfg.with_packet_numbers {
                        g.push("pkt_x509", *pkt);
                    }
                    let list = certs
                        .iter()
                        .map(|c| {
                            let mut cm = Map::new();
                            cm.push("ja4x", c.ja4x.clone());
                            if cfg.with_raw {
                                cm.push("ja4x_r", c.ja4x_r.clone());
                            }
                            for (k, v) in &c.names {
                                cm.push(k.clone(), v.clone());
                            }
                            Value::Map(cm)
                        })
                        .collect::<Vec<_>>();
                    g.push("x509", Value::List(list));
                    Value::Map(g)
                })
                .collect::<Vec<_>>();
            m.push("tls_certs", Value::List(groups));
        }
        if let (Some(c), Some(s)) = (&self.ja4l_c, &self.ja4l_s) {
            m.push("ja4l_c", c.clone());
            m.push("ja4l_s", s.clone());
        }
        if !self.http.is_empty() {
            let list = self
                .http
                .iter()
                .map(|p| {
                    let mut h = Map::new();
                    if cfg.with_packet_numbers {
                        h.push("pkt_ja4h", p.pkt);
                    }
                    h.push(if o { "ja4h_o" } else { "ja4h" }, p.hashed.clone());
                    if cfg.with_raw {
                        h.push(if o { "ja4h_ro" } else { "ja4h_r" }, p.raw.clone());
                    }
                    Value::Map(h)
                })
                .collect::<Vec<_>>();
            m.push("http", Value::List(list));
        }
        if !self.ja4ssh.is_empty() {
            m.push(
                "ja4ssh",
                Value::List(self.ja4ssh.iter().map(|s| Value::Str(s.clone())).collect()),
            );
        }
        if let Some(x) = &self.ssh_extras {
            let mut e = Map::new();
            e.push("hassh", x.hassh.clone());
            e.push("hassh_server", x.hassh_server.clone());
            e.push("ssh_protocol_client", x.ssh_protocol_client.clone());
            e.push("ssh_protocol_server", x.ssh_protocol_server.clone());
            e.push("encryption_algorithm", x.encryption_algorithm.clone());
            m.push("ssh_extras", Value::Map(e));
        }
        if !self.ja4d.is_empty() {
            let list = self
                .ja4d
                .iter()
                .map(|p| {
                    if cfg.with_packet_numbers {
                        let mut d = Map::new();
                        d.push("pkt_ja4d", p.pkt);
                        d.push("ja4d", p.hashed.clone());
                        Value::Map(d)
                    } else {
                        Value::Str(p.hashed.clone())
                    }
                })
                .collect::<Vec<_>>();
            m.push("ja4d", Value::List(list));
        }
        m
    }
}
