//! The messages of `proto/farestream.proto`, generated from it at build
//! time, and their conversions to the scan vocabulary. The proto's enums
//! are named `WireTapKind` and `WireScanStatus` here, beside the core's own
//! `TapKind` and `ScanStatus`.

use crate::scan::{ScanStatus, TapKind};

/// Generated from `proto/farestream.proto` at build time (see `build.rs`). The
/// `.proto` file is their documentation.
#[allow(missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/farestream.v1.rs"));
}

pub use generated::{
    AckStatus, BatchAck, DenyListUpdate, DenyListUpdateKind, GateDecision, RejectedScan, ScanBatch, ScanRecord,
    ScanStatus as WireScanStatus, TapKind as WireTapKind,
};

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
    pub(crate) fn to_tap_kind(self) -> Option<TapKind> {
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
            ScanStatus::LateUpload => WireScanStatus::LateUpload,
            ScanStatus::ForeignValidator => WireScanStatus::ForeignValidator,
        }
    }
}

impl WireScanStatus {
    pub(crate) fn to_scan_status(self) -> Option<ScanStatus> {
        ScanStatus::ALL.into_iter().find(|s| WireScanStatus::from(*s) == self)
    }
}

impl ScanRecord {
    pub(crate) fn wire_tap_kind(&self) -> Option<TapKind> {
        WireTapKind::try_from(self.tap_kind).ok().and_then(WireTapKind::to_tap_kind)
    }

    /// Whether the gate opened: `None` when the gateway did not say (an
    /// unknown value counts as not saying).
    pub fn gate_opened(&self) -> Option<bool> {
        match GateDecision::try_from(self.gate) {
            Ok(GateDecision::Opened) => Some(true),
            Ok(GateDecision::Refused) => Some(false),
            _ => None,
        }
    }

    /// The deny list version the validator held, if it said.
    pub fn deny_list_version(&self) -> Option<u64> {
        (self.deny_list_version != 0).then_some(self.deny_list_version)
    }
}

impl RejectedScan {
    /// The rejected scan's status; `None` for a value this build does not know.
    pub fn scan_status(&self) -> Option<ScanStatus> {
        WireScanStatus::try_from(self.status).ok().and_then(WireScanStatus::to_scan_status)
    }
}

impl BatchAck {
    /// The ack's status; `Unspecified` for a value this build does not know.
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

    /// An answer that tells the gateway to resend the batch after
    /// `retry_after_ms`: the server could not take it now.
    pub fn backoff(gateway_id: &str, batch_seq: u64, error: String, retry_after_ms: u32) -> BatchAck {
        BatchAck {
            gateway_id: gateway_id.to_string(),
            batch_seq,
            status: AckStatus::Backoff as i32,
            error,
            retry_after_ms,
            ..BatchAck::default()
        }
    }
}
