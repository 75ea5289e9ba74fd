//! Geolocation and ASN of an address, from files the operator provides (`threat.country_db`,
//! `threat.asn_db`); `scripts/fetch-geo.sh` fetches redistributable ones from the npm registry.
//!
//! * Country: any MMDB, read with the `maxminddb` crate — the ip-location-db schema
//!   (`{"country_code": "AU"}`) or MaxMind/DB-IP's GeoIP2 one (`country.iso_code`).
//! * ASN: an MMDB with `autonomous_system_number`/`…_organization` (GeoLite2-ASN, DB-IP ASN), or
//!   ip-location-db's CSV (`first,last,asn,organisation`, one file per family), loaded into a
//!   sorted range table searched by bisection.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{Reader, path};
use serde::{Deserialize, Serialize};

/// What is known of an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Place {
    /// ISO 3166-1 alpha-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
}

/// Why a geolocation file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> GeoError {
    GeoError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// ASN ranges of one family, sorted by first address.
#[derive(Debug, Default)]
struct Ranges<K> {
    rows: Vec<(K, K, u32, u32)>,
}

impl<K: Copy + Ord> Ranges<K> {
    fn find(&self, ip: K) -> Option<(u32, u32)> {
        let i = self.rows.partition_point(|r| r.0 <= ip);
        let r = self.rows.get(i.checked_sub(1)?)?;
        (ip <= r.1).then_some((r.2, r.3))
    }
}

#[derive(Debug)]
enum Asn {
    Mmdb(Reader<Vec<u8>>),
    Csv {
        v4: Ranges<u32>,
        v6: Ranges<u128>,
        orgs: Vec<String>,
    },
}

/// The loaded databases.
#[derive(Debug, Default)]
pub struct Geo {
    country: Option<Reader<Vec<u8>>>,
    asn: Vec<Asn>,
}

impl Geo {
    /// Loads the files configured; `None` paths load nothing (lookups then give nothing).
    pub fn open(country: Option<&Path>, asn: &[PathBuf]) -> Result<Geo, GeoError> {
        let country = country
            .map(|p| Reader::open_readfile(p).map_err(|e| file_error(p, e)))
            .transpose()?;
        let mut asns = Vec::new();
        for p in asn {
            if p.extension().is_some_and(|e| e == "mmdb") {
                asns.push(Asn::Mmdb(
                    Reader::open_readfile(p).map_err(|e| file_error(p, e))?,
                ));
            } else {
                let text = std::fs::read_to_string(p).map_err(|e| file_error(p, e))?;
                asns.push(asn_csv(&text).map_err(|e| file_error(p, e))?);
            }
        }
        Ok(Geo { country, asn: asns })
    }

    /// Whether any database is loaded.
    pub fn is_empty(&self) -> bool {
        self.country.is_none() && self.asn.is_empty()
    }

    pub fn lookup(&self, ip: IpAddr) -> Place {
        let mut place = Place::default();
        if let Some(r) = &self.country
            && let Ok(found) = r.lookup(ip)
        {
            place.country = found
                .decode_path::<String>(&path!["country_code"])
                .ok()
                .flatten()
                .or_else(|| {
                    found
                        .decode_path::<String>(&path!["country", "iso_code"])
                        .ok()
                        .flatten()
                });
        }
        for a in &self.asn {
            let got = match a {
                Asn::Mmdb(r) => r.lookup(ip).ok().and_then(|found| {
                    let n = found
                        .decode_path::<u32>(&path!["autonomous_system_number"])
                        .ok()
                        .flatten()?;
                    let org = found
                        .decode_path::<String>(&path!["autonomous_system_organization"])
                        .ok()
                        .flatten();
                    Some((n, org))
                }),
                Asn::Csv { v4, v6, orgs } => match ip {
                    IpAddr::V4(x) => v4.find(u32::from(x)),
                    IpAddr::V6(x) => v6.find(u128::from(x)),
                }
                .map(|(n, o)| (n, orgs.get(o as usize).cloned())),
            };
            if let Some((n, org)) = got {
                place.asn = Some(n);
                place.as_org = org.filter(|o| !o.is_empty());
                break;
            }
        }
        place
    }
}

fn asn_csv(text: &str) -> Result<Asn, String> {
    let mut v4 = Ranges::default();
    let mut v6 = Ranges::default();
    let mut orgs: Vec<String> = Vec::new();
    let mut org_ids = std::collections::HashMap::new();
    for (line, fields) in super::feeds::csv_records(text) {
        if fields.len() < 3 {
            return Err(format!(
                "line {line}: expected first,last,asn[,organisation]"
            ));
        }
        let (Ok(first), Ok(last)) = (
            fields[0].trim().parse::<IpAddr>(),
            fields[1].trim().parse::<IpAddr>(),
        ) else {
            if line == 1 {
                continue; // a header
            }
            return Err(format!("line {line}: not an address range"));
        };
        let Ok(asn) = fields[2].trim().parse::<u32>() else {
            return Err(format!("line {line}: not an AS number"));
        };
        let org = fields
            .get(3)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let next = orgs.len() as u32;
        let id = *org_ids.entry(org.clone()).or_insert_with(|| {
            orgs.push(org);
            next
        });
        match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => v4.rows.push((u32::from(a), u32::from(b), asn, id)),
            (IpAddr::V6(a), IpAddr::V6(b)) => v6.rows.push((u128::from(a), u128::from(b), asn, id)),
            _ => return Err(format!("line {line}: range mixes IPv4 and IPv6")),
        }
    }
    v4.rows.sort_unstable_by_key(|r| r.0);
    v6.rows.sort_unstable_by_key(|r| r.0);
    Ok(Asn::Csv { v4, v6, orgs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn_csv_ranges() {
        let Asn::Csv { v4, v6, orgs } = asn_csv(
            "1.0.4.0,1.0.7.255,38803,Gtelecom Pty Ltd\n\
             1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n\
             2001:db8::,2001:db8::ffff,64500,Doc\n",
        )
        .unwrap() else {
            panic!("csv")
        };
        let ip = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!(v4.find(ip("1.0.0.1")).map(|x| x.0), Some(13335));
        assert_eq!(
            orgs[v4.find(ip("1.0.0.1")).unwrap().1 as usize],
            "Cloudflare, Inc."
        );
        assert_eq!(v4.find(ip("1.0.5.9")).map(|x| x.0), Some(38803));
        assert_eq!(v4.find(ip("1.0.1.0")), None);
        assert_eq!(v4.find(ip("0.0.0.1")), None);
        let ip6 = u128::from("2001:db8::10".parse::<std::net::Ipv6Addr>().unwrap());
        assert_eq!(v6.find(ip6).map(|x| x.0), Some(64500));
        assert!(asn_csv("1.0.0.0,1.0.0.255,notanumber\n").is_err());
    }
}
