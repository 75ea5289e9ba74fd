//! Reading capture files with libpcap's offline mode, one packet at a time (the file is
//! streamed, never loaded whole).

use std::path::Path;

use thiserror::Error;

use crate::decode::LinkType;

/// Why a capture file can't be read.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: no such file")]
    NotFound { path: String },
    #[error("{path}: permission denied")]
    PermissionDenied { path: String },
    #[error("{path}: not a pcap or pcapng capture file ({detail})")]
    NotACapture { path: String, detail: String },
    #[error(
        "{path}: unsupported link type {dlt} (supported: Ethernet, Linux cooked v1/v2, raw IPv4/IPv6, BSD loopback)"
    )]
    UnsupportedLinkType { path: String, dlt: i32 },
    #[error("{path}: read error: {detail}")]
    Read { path: String, detail: String },
}

impl FileError {
    /// Process exit code for this error (sysexits.h: EX_NOINPUT 66, EX_DATAERR 65).
    pub fn exit_code(&self) -> i32 {
        match self {
            FileError::NotFound { .. } | FileError::PermissionDenied { .. } => 66,
            FileError::NotACapture { .. } | FileError::UnsupportedLinkType { .. } => 65,
            FileError::Read { .. } => 74,
        }
    }
}

/// An open capture file.
pub struct CaptureFile {
    cap: pcap::Capture<pcap::Offline>,
    link: LinkType,
    path: String,
}

impl std::fmt::Debug for CaptureFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureFile")
            .field("path", &self.path)
            .field("link", &self.link)
            .finish()
    }
}

/// One packet: capture time in microseconds since the epoch, original length, bytes.
#[derive(Debug)]
pub struct FilePacket<'a> {
    pub ts_us: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
}

impl CaptureFile {
    /// Opens `path` (`-` = standard input).
    pub fn open(path: &str) -> Result<CaptureFile, FileError> {
        if path != "-" {
            let p = Path::new(path);
            match std::fs::metadata(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(FileError::NotFound {
                        path: path.to_string(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(FileError::PermissionDenied {
                        path: path.to_string(),
                    });
                }
                Err(e) => {
                    return Err(FileError::Read {
                        path: path.to_string(),
                        detail: e.to_string(),
                    });
                }
                Ok(m) if m.is_dir() => {
                    return Err(FileError::NotACapture {
                        path: path.to_string(),
                        detail: "is a directory".into(),
                    });
                }
                Ok(_) => {}
            }
            if let Err(e) = std::fs::File::open(p)
                && e.kind() == std::io::ErrorKind::PermissionDenied
            {
                return Err(FileError::PermissionDenied {
                    path: path.to_string(),
                });
            }
        }
        let cap = pcap::Capture::from_file(path).map_err(|e| FileError::NotACapture {
            path: path.to_string(),
            detail: e.to_string(),
        })?;
        let dlt = cap.get_datalink().0;
        let link = LinkType::from_dlt(dlt).ok_or(FileError::UnsupportedLinkType {
            path: path.to_string(),
            dlt,
        })?;
        Ok(CaptureFile {
            cap,
            link,
            path: path.to_string(),
        })
    }

    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// The next packet, `Ok(None)` at the end of the file. A truncated last record ends the
    /// file with an error the caller can count.
    pub fn next_packet(&mut self) -> Result<Option<FilePacket<'_>>, FileError> {
        match self.cap.next_packet() {
            Ok(p) => {
                let ts = p.header.ts;
                let ts_us = ts.tv_sec.max(0) as u64 * 1_000_000 + ts.tv_usec.max(0) as u64;
                Ok(Some(FilePacket {
                    ts_us,
                    orig_len: p.header.len,
                    data: p.data,
                }))
            }
            Err(pcap::Error::NoMorePackets) => Ok(None),
            Err(e) => Err(FileError::Read {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
        }
    }
}
