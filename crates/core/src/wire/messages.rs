//! Protobuf messages of `proto/farestream.proto`, written with prost's
//! derive rather than generated, so the build needs no `protoc`. Keep the
//! two in step: `tags_match_the_proto_file` below checks every field number.

use crate::scan::{ScanStatus, TapKind};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScanBatch {
    #[prost(string, tag = "1")]
    pub gateway_id: String,
    #[prost(uint64, tag = "2")]
    pub batch_seq: u64,
    #[prost(message, repeated, tag = "3")]
    pub scans: Vec<ScanRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScanRecord {
    #[prost(string, tag = "1")]
    pub validator_id: String,
    #[prost(uint64, tag = "2")]
    pub validator_seq: u64,
    #[prost(int64, tag = "3")]
    pub validator_time_ms: i64,
    #[prost(string, tag = "4")]
    pub route_id: String,
    #[prost(string, tag = "5")]
    pub stop_id: String,
    #[prost(enumeration = "WireTapKind", tag = "6")]
    pub tap_kind: i32,
    #[prost(bytes = "vec", tag = "7")]
    pub ride_code: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WireTapKind {
    Unspecified = 0,
    Entry = 1,
    Exit = 2,
    Single = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AckStatus {
    Unspecified = 0,
    Ok = 1,
    Malformed = 2,
    Backoff = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WireScanStatus {
    Unspecified = 0,
    Accepted = 1,
    Replay = 2,
    BadSignature = 3,
    ExpiredCredential = 4,
    StaleCode = 5,
    Denied = 6,
    UnknownIssuerKey = 7,
    Malformed = 8,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RejectedScan {
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(enumeration = "WireScanStatus", tag = "2")]
    pub status: i32,
    #[prost(string, tag = "3")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchAck {
    #[prost(string, tag = "1")]
    pub gateway_id: String,
    #[prost(uint64, tag = "2")]
    pub batch_seq: u64,
    #[prost(enumeration = "AckStatus", tag = "3")]
    pub status: i32,
    #[prost(uint32, tag = "4")]
    pub accepted: u32,
    #[prost(uint32, tag = "5")]
    pub redelivered: u32,
    #[prost(uint32, tag = "6")]
    pub rejected: u32,
    #[prost(message, repeated, tag = "7")]
    pub rejections: Vec<RejectedScan>,
    #[prost(string, tag = "8")]
    pub error: String,
    #[prost(uint32, tag = "9")]
    pub retry_after_ms: u32,
}

impl From<TapKind> for WireTapKind {
    fn from(kind: TapKind) -> WireTapKind {
        match kind {
            TapKind::Entry => WireTapKind::Entry,
            TapKind::Exit => WireTapKind::Exit,
            TapKind::Single => WireTapKind::Single,
        }
    }
}

impl WireTapKind {
    pub fn to_tap_kind(self) -> Option<TapKind> {
        match self {
            WireTapKind::Unspecified => None,
            WireTapKind::Entry => Some(TapKind::Entry),
            WireTapKind::Exit => Some(TapKind::Exit),
            WireTapKind::Single => Some(TapKind::Single),
        }
    }
}

impl From<ScanStatus> for WireScanStatus {
    fn from(status: ScanStatus) -> WireScanStatus {
        match status {
            ScanStatus::Accepted => WireScanStatus::Accepted,
            ScanStatus::Replay => WireScanStatus::Replay,
            ScanStatus::BadSignature => WireScanStatus::BadSignature,
            ScanStatus::ExpiredCredential => WireScanStatus::ExpiredCredential,
            ScanStatus::StaleCode => WireScanStatus::StaleCode,
            ScanStatus::Denied => WireScanStatus::Denied,
            ScanStatus::UnknownIssuerKey => WireScanStatus::UnknownIssuerKey,
            ScanStatus::Malformed => WireScanStatus::Malformed,
        }
    }
}

impl WireScanStatus {
    pub fn to_scan_status(self) -> Option<ScanStatus> {
        ScanStatus::ALL.into_iter().find(|s| WireScanStatus::from(*s) == self)
    }
}

impl ScanRecord {
    pub fn wire_tap_kind(&self) -> Option<TapKind> {
        WireTapKind::try_from(self.tap_kind).ok().and_then(WireTapKind::to_tap_kind)
    }
}

impl RejectedScan {
    pub fn scan_status(&self) -> Option<ScanStatus> {
        WireScanStatus::try_from(self.status).ok().and_then(WireScanStatus::to_scan_status)
    }
}

impl BatchAck {
    pub fn ack_status(&self) -> AckStatus {
        AckStatus::try_from(self.status).unwrap_or(AckStatus::Unspecified)
    }

    /// An error answer for a batch that could not be processed at all.
    pub fn malformed(gateway_id: &str, batch_seq: u64, error: String) -> BatchAck {
        BatchAck {
            gateway_id: gateway_id.to_string(),
            batch_seq,
            status: AckStatus::Malformed as i32,
            error,
            ..BatchAck::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `proto/farestream.proto` and checks each `name = tag;` line
    /// against the tag prost encodes for the same field here.
    #[test]
    fn tags_match_the_proto_file() {
        let proto = include_str!("../../../../proto/farestream.proto");
        let expect = |message: &str, field: &str, tag: u32| {
            let block_start = proto.find(&format!("message {message} {{")).expect(message);
            let block = &proto[block_start..];
            let block = &block[..block.find("\n}").expect("block end")];
            let line = block
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(field) || l.split_whitespace().nth(2) == Some(field))
                .unwrap_or_else(|| panic!("{message}.{field} missing from proto"));
            assert!(line.contains(&format!("= {tag};")), "{message}.{field} should be tag {tag}: {line}");
        };
        for (field, tag) in [("gateway_id", 1), ("batch_seq", 2), ("scans", 3)] {
            expect("ScanBatch", field, tag);
        }
        for (field, tag) in [
            ("validator_id", 1),
            ("validator_seq", 2),
            ("validator_time_ms", 3),
            ("route_id", 4),
            ("stop_id", 5),
            ("tap_kind", 6),
            ("ride_code", 7),
        ] {
            expect("ScanRecord", field, tag);
        }
        for (field, tag) in [("index", 1), ("status", 2), ("reason", 3)] {
            expect("RejectedScan", field, tag);
        }
        for (field, tag) in [
            ("gateway_id", 1),
            ("batch_seq", 2),
            ("status", 3),
            ("accepted", 4),
            ("redelivered", 5),
            ("rejected", 6),
            ("rejections", 7),
            ("error", 8),
            ("retry_after_ms", 9),
        ] {
            expect("BatchAck", field, tag);
        }
    }

    #[test]
    fn every_scan_status_has_a_wire_value() {
        for status in ScanStatus::ALL {
            assert_eq!(WireScanStatus::from(status).to_scan_status(), Some(status));
        }
    }
}
