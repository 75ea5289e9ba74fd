//! SSH connections: banners and KEXINIT from the cleartext start of each direction (HASSH,
//! the `ssh_extras` fields) and the JA4SSH packet statistics over the whole connection.

use hais_dissect::ssh::{KexInit, SshEvent, SshStream};

use super::fingerprints::{Fingerprints, SshExtrasOut};
use super::tcp::{C2S, S2C};
use super::{Ctx, EngineConfig};

/// SSH state of one TCP connection.
#[derive(Debug)]
pub(crate) struct SshSession {
    streams: [SshStream; 2],
    banners: [Option<hais_dissect::ssh::SshBanner>; 2],
    kex: [Option<Box<KexInit>>; 2],
    events: Vec<SshEvent>,
    #[cfg(feature = "ja4plus")]
    ja4ssh: hais_ja4plus::ja4ssh::Ja4Ssh,
    windows: Vec<String>,
}

impl SshSession {
    pub(crate) fn new(cfg: &EngineConfig) -> Self {
        #[cfg(not(feature = "ja4plus"))]
        let _ = cfg;
        SshSession {
            streams: [SshStream::new(), SshStream::new()],
            banners: [None, None],
            kex: [None, None],
            events: Vec::new(),
            #[cfg(feature = "ja4plus")]
            ja4ssh: hais_ja4plus::ja4ssh::Ja4Ssh::with_window(cfg.ssh_window),
            windows: Vec::new(),
        }
    }

    pub(crate) fn wants_bytes(&self, dir: usize) -> bool {
        !self.streams[dir].is_finished() && self.kex[dir].is_none()
    }

    pub(crate) fn on_bytes(&mut self, ctx: &mut Ctx<'_>, dir: usize, bytes: &[u8]) {
        if self.streams[dir].is_finished() {
            return;
        }
        self.events.clear();
        if self.streams[dir].push(bytes, &mut self.events).is_err() {
            ctx.stats.error("ssh.bad_packet");
            self.streams[dir].stop();
        }
        for ev in self.events.drain(..) {
            match ev {
                SshEvent::Banner(b) => {
                    if self.banners[dir].is_none() {
                        self.banners[dir] = Some(b);
                    }
                }
                SshEvent::KexInit(k) => {
                    if self.kex[dir].is_none() {
                        self.kex[dir] = Some(k);
                    }
                }
                SshEvent::NewKeys => {}
            }
        }
        if self.kex[dir].is_some() {
            self.streams[dir].stop();
        }
    }

    pub(crate) fn on_packet(
        &mut self,
        ctx: &mut Ctx<'_>,
        from_client: bool,
        flags: u8,
        len: usize,
        retrans: bool,
    ) {
        #[cfg(feature = "ja4plus")]
        {
            if retrans {
                return;
            }
            if let Some(w) = self.ja4ssh.on_packet(from_client, len, flags) {
                self.windows.push(w);
            }
        }
        #[cfg(not(feature = "ja4plus"))]
        let _ = (from_client, flags, len, retrans);
        let _ = ctx;
    }

    pub(crate) fn finish(&mut self, cfg: &EngineConfig, fp: &mut Fingerprints) {
        let _ = cfg;
        #[cfg(feature = "ja4plus")]
        {
            if let Some(w) = self.ja4ssh.finish() {
                self.windows.push(w);
            }
            fp.ja4ssh = std::mem::take(&mut self.windows);
            let x = hais_ja4plus::ja4ssh::SshExtras::new(
                self.banners[C2S].as_ref(),
                self.banners[S2C].as_ref(),
                self.kex[C2S].as_deref(),
                self.kex[S2C].as_deref(),
            );
            if self.banners.iter().any(Option::is_some) || self.kex.iter().any(Option::is_some) {
                fp.ssh_extras = Some(SshExtrasOut {
                    hassh: x.hassh,
                    hassh_server: x.hassh_server,
                    ssh_protocol_client: x.ssh_protocol_client,
                    ssh_protocol_server: x.ssh_protocol_server,
                    encryption_algorithm: x.encryption_algorithm,
                });
            }
        }
        #[cfg(not(feature = "ja4plus"))]
        let _ = fp;
    }
}
