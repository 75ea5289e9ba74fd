//! The JA4+ method names, as they appear in events, APIs and the control plane's storage.

use serde::{Deserialize, Serialize};

/// One JA4+ fingerprinting method. The wire and storage name is the lowercase method name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Ja4,
    Ja4s,
    Ja4h,
    Ja4l,
    Ja4ls,
    Ja4x,
    Ja4ssh,
    Ja4t,
    Ja4ts,
    Ja4d,
    Ja4d6,
}

impl Method {
    /// Every method, in the order the specification lists them.
    pub const ALL: [Method; 11] = [
        Method::Ja4,
        Method::Ja4s,
        Method::Ja4h,
        Method::Ja4l,
        Method::Ja4ls,
        Method::Ja4x,
        Method::Ja4ssh,
        Method::Ja4t,
        Method::Ja4ts,
        Method::Ja4d,
        Method::Ja4d6,
    ];

    /// The lowercase name used on the wire and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Ja4 => "ja4",
            Method::Ja4s => "ja4s",
            Method::Ja4h => "ja4h",
            Method::Ja4l => "ja4l",
            Method::Ja4ls => "ja4ls",
            Method::Ja4x => "ja4x",
            Method::Ja4ssh => "ja4ssh",
            Method::Ja4t => "ja4t",
            Method::Ja4ts => "ja4ts",
            Method::Ja4d => "ja4d",
            Method::Ja4d6 => "ja4d6",
        }
    }

    /// Whether the method is JA4 proper (BSD-3-Clause) rather than JA4+ (FoxIO License 1.1).
    pub fn is_bsd_licensed(self) -> bool {
        self == Method::Ja4
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
