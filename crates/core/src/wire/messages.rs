//! The messages of `proto/farestream.proto`, generated from it at build
//! time, and their conversions to the scan vocabulary. The proto's enums
//! are named `WireTapKind` and `WireScanStatus` here, beside the core's own
//! `TapKind` and `ScanStatus`.

use crate::ridecode::terminal::TERMINAL_KEY_SECRET_LEN;
use crate::ridecode::{HeldTerminalKey, PublishedKey};
use crate::scan::{ScanStatus, TapKind};

/// Generated from `proto/farestream.proto` at build time (see `build.rs`). The
/// `.proto` file is their documentation.
#[allow(missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/farestream.v1.rs"));
}

pub use generated::{
    AckStatus, BatchAck, DenyListUpdate, DenyListUpdateKind, GateDecision, IssuerKeySet, IssuerPublicKey, RejectedScan,
    ScanBatch, ScanRecord, ScanStatus as WireScanStatus, ServerPush, TapKind as WireTapKind,
    TerminalKey as WireTerminalKey, TerminalKeySet, server_push,
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
            ScanStatus::Undecryptable => WireScanStatus::Undecryptable,
            ScanStatus::UnknownTerminalKey => WireScanStatus::UnknownTerminalKey,
            ScanStatus::ExpiredTerminalKey => WireScanStatus::ExpiredTerminalKey,
            ScanStatus::FormatRetired => WireScanStatus::FormatRetired,
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

/// Why an issuer key set from the server was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// A public key is not 32 bytes.
    #[error("issuer key {key_id}: public key of {len} bytes, not 32")]
    BadPublicKey {
        /// The key's id.
        key_id: u32,
        /// Its length.
        len: usize,
    },
    /// Two keys share an id.
    #[error("key {0} appears twice")]
    Duplicate(u32),
    /// A terminal key id outside 1 to 65535.
    #[error("terminal key id {0} is outside 1 to 65535")]
    BadTerminalKeyId(u32),
    /// A terminal key's secret is not 32 bytes.
    #[error("terminal key {key_id}: secret of {len} bytes, not 32")]
    BadSecret {
        /// The key's id.
        key_id: u32,
        /// Its length.
        len: usize,
    },
    /// A terminal key's service date is not `YYYY-MM-DD`.
    #[error("terminal key {0}: service date is not YYYY-MM-DD")]
    BadServiceDate(u32),
    /// The version-1 cut-off is not a time a ride code can hold.
    #[error("version-1 cut-off {0} is outside 0 to 2^32 - 1 Unix seconds")]
    BadFormatCutOff(i64),
    /// More keys than the holder keeps.
    #[error("{count} issuer keys, over the limit of {max}")]
    TooMany {
        /// Keys in the set.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl IssuerKeySet {
    /// The wire form of `keys`.
    pub fn from_published(keys: &[PublishedKey]) -> IssuerKeySet {
        let keys = keys
            .iter()
            .map(|key| IssuerPublicKey {
                key_id: key.key_id,
                public_key: key.public_key.to_vec(),
                signs_from_unix_secs: key.signs_from_secs,
                trusted_until_unix_secs: key.trusted_until_secs,
            })
            .collect();
        IssuerKeySet { keys }
    }

    /// The keys, checked: each 32 bytes, each id once, at most `keys_max`.
    pub fn to_published(&self, keys_max: usize) -> Result<Vec<PublishedKey>, KeySetError> {
        if self.keys.len() > keys_max {
            return Err(KeySetError::TooMany { count: self.keys.len(), max: keys_max });
        }
        let mut published: Vec<PublishedKey> = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let public_key = <[u8; 32]>::try_from(key.public_key.as_slice())
                .map_err(|_| KeySetError::BadPublicKey { key_id: key.key_id, len: key.public_key.len() })?;
            if published.iter().any(|p| p.key_id == key.key_id) {
                return Err(KeySetError::Duplicate(key.key_id));
            }
            published.push(PublishedKey {
                key_id: key.key_id,
                public_key,
                signs_from_secs: key.signs_from_unix_secs,
                trusted_until_secs: key.trusted_until_unix_secs,
            });
        }
        Ok(published)
    }
}

impl std::fmt::Debug for WireTerminalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalKey")
            .field("key_id", &self.key_id)
            .field("secret_len", &self.secret.len())
            .field("service_date", &self.service_date)
            .field("handed_out_from_unix_secs", &self.handed_out_from_unix_secs)
            .field("trusted_until_unix_secs", &self.trusted_until_unix_secs)
            .finish()
    }
}

impl TerminalKeySet {
    /// The wire form of `keys` and of the version-1 cut-off.
    pub fn from_held(keys: &[HeldTerminalKey], version_1_refused_from_secs: Option<u32>) -> TerminalKeySet {
        let keys = keys
            .iter()
            .map(|key| WireTerminalKey {
                key_id: u32::from(key.key_id),
                secret: key.secret.to_vec(),
                service_date: key.service_date.format("%Y-%m-%d").to_string(),
                handed_out_from_unix_secs: key.handed_out_from_secs,
                trusted_until_unix_secs: key.trusted_until_secs,
            })
            .collect();
        TerminalKeySet { keys, version_1_refused_from_unix_secs: version_1_refused_from_secs.map(i64::from) }
    }

    /// The version-1 cut-off, checked: a time a ride code can hold.
    pub fn version_1_refused_from_secs(&self) -> Result<Option<u32>, KeySetError> {
        self.version_1_refused_from_unix_secs
            .map(|secs| u32::try_from(secs).map_err(|_| KeySetError::BadFormatCutOff(secs)))
            .transpose()
    }

    /// The keys, checked: ids 1 to 65535 each once, 32-byte secrets, dates
    /// that are dates, at most `keys_max`.
    pub fn to_held(&self, keys_max: usize) -> Result<Vec<HeldTerminalKey>, KeySetError> {
        if self.keys.len() > keys_max {
            return Err(KeySetError::TooMany { count: self.keys.len(), max: keys_max });
        }
        let mut held: Vec<HeldTerminalKey> = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let key_id = u16::try_from(key.key_id)
                .ok()
                .filter(|id| *id != 0)
                .ok_or(KeySetError::BadTerminalKeyId(key.key_id))?;
            let secret = <[u8; TERMINAL_KEY_SECRET_LEN]>::try_from(key.secret.as_slice())
                .map_err(|_| KeySetError::BadSecret { key_id: key.key_id, len: key.secret.len() })?;
            let service_date = chrono::NaiveDate::parse_from_str(&key.service_date, "%Y-%m-%d")
                .map_err(|_| KeySetError::BadServiceDate(key.key_id))?;
            if held.iter().any(|h| h.key_id == key_id) {
                return Err(KeySetError::Duplicate(key.key_id));
            }
            held.push(HeldTerminalKey {
                key_id,
                secret: secret.into(),
                service_date,
                handed_out_from_secs: key.handed_out_from_unix_secs,
                trusted_until_secs: key.trusted_until_unix_secs,
            });
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminal key set at its extremes round-trips; every bad field is
    /// refused by name.
    #[test]
    fn a_terminal_key_set_is_checked_field_by_field() {
        let key = |key_id: u32, len: usize, date: &str| WireTerminalKey {
            key_id,
            secret: vec![9; len],
            service_date: date.into(),
            handed_out_from_unix_secs: i64::MIN,
            trusted_until_unix_secs: Some(i64::MAX),
        };
        let good = TerminalKeySet {
            keys: vec![key(1, 32, "2026-12-03"), key(65_535, 32, "9999-12-31")],
            version_1_refused_from_unix_secs: Some(i64::from(u32::MAX)),
        };
        let printed = format!("{good:?}");
        assert!(printed.contains("secret_len: 32") && !printed.contains("9, 9"), "no secret in Debug: {printed}");
        let held = good.to_held(64).expect("good");
        assert_eq!(TerminalKeySet::from_held(&held, Some(u32::MAX)), good, "round trip");
        let cut_off = |secs| TerminalKeySet { keys: vec![], version_1_refused_from_unix_secs: secs };
        assert_eq!(cut_off(None).to_held(64), Ok(vec![]));
        assert_eq!(cut_off(None).version_1_refused_from_secs(), Ok(None));
        assert_eq!(cut_off(Some(0)).version_1_refused_from_secs(), Ok(Some(0)));
        assert_eq!(cut_off(Some(4_294_967_295)).version_1_refused_from_secs(), Ok(Some(u32::MAX)));
        for bad in [-1, 4_294_967_296, i64::MIN, i64::MAX] {
            assert_eq!(cut_off(Some(bad)).version_1_refused_from_secs(), Err(KeySetError::BadFormatCutOff(bad)));
        }
        let refused = |keys, max| TerminalKeySet { keys, ..cut_off(None) }.to_held(max).expect_err("refused");
        assert_eq!(refused(vec![key(0, 32, "2026-12-03")], 64), KeySetError::BadTerminalKeyId(0));
        assert_eq!(refused(vec![key(65_536, 32, "2026-12-03")], 64), KeySetError::BadTerminalKeyId(65_536));
        assert_eq!(refused(vec![key(1, 31, "2026-12-03")], 64), KeySetError::BadSecret { key_id: 1, len: 31 });
        assert_eq!(refused(vec![key(1, 0, "2026-12-03")], 64), KeySetError::BadSecret { key_id: 1, len: 0 });
        assert_eq!(refused(vec![key(1, 32, "")], 64), KeySetError::BadServiceDate(1));
        assert_eq!(refused(vec![key(1, 32, "2026-02-30")], 64), KeySetError::BadServiceDate(1));
        let twice = vec![key(1, 32, "2026-12-03"), key(1, 32, "2026-12-04")];
        assert_eq!(refused(twice, 64), KeySetError::Duplicate(1));
        assert_eq!(refused(vec![key(1, 32, "2026-12-03"); 3], 2), KeySetError::TooMany { count: 3, max: 2 });
    }

    fn key(key_id: u32, len: usize, signs_from: i64, until: Option<i64>) -> IssuerPublicKey {
        IssuerPublicKey {
            key_id,
            public_key: vec![7; len],
            signs_from_unix_secs: signs_from,
            trusted_until_unix_secs: until,
        }
    }

    /// Every field of a pushed key set at its extremes: no keys, the most
    /// a gateway holds and one more, keys of 0, 31 and 33 bytes, an id
    /// twice, the first and last ids and times.
    #[test]
    fn a_key_set_at_its_extremes() {
        assert_eq!(IssuerKeySet { keys: vec![] }.to_published(64), Ok(vec![]));
        let full: Vec<_> = (0..64).map(|id| key(id, 32, 0, None)).collect();
        assert_eq!(IssuerKeySet { keys: full.clone() }.to_published(64).map(|k| k.len()), Ok(64));
        let over = IssuerKeySet { keys: [full, vec![key(64, 32, 0, None)]].concat() };
        assert_eq!(over.to_published(64), Err(KeySetError::TooMany { count: 65, max: 64 }));
        for len in [0, 31, 33] {
            let set = IssuerKeySet { keys: vec![key(1, len, 0, None)] };
            assert_eq!(set.to_published(64), Err(KeySetError::BadPublicKey { key_id: 1, len }));
        }
        let twice = IssuerKeySet { keys: vec![key(5, 32, 0, None), key(5, 32, 1, None)] };
        assert_eq!(twice.to_published(64), Err(KeySetError::Duplicate(5)));
        let edges = IssuerKeySet {
            keys: vec![key(0, 32, i64::MIN, Some(i64::MAX)), key(u32::MAX, 32, i64::MAX, Some(i64::MIN))],
        };
        let published = edges.to_published(64).expect("edges");
        assert_eq!(published[0].trusted_until_secs, Some(i64::MAX));
        assert!(!published[1].trusted_at(i64::MAX), "an end before the start is no trust");
        assert_eq!(IssuerKeySet::from_published(&published), edges, "round trip");
        let open = IssuerKeySet { keys: vec![key(1, 32, 0, None)] }.to_published(64).expect("open");
        assert!(open[0].trusted_at(i64::MAX), "no end yet");
        // Review: 0 meant "no end", so a key whose end was 0 was trusted for ever.
        let ended = IssuerKeySet { keys: vec![key(1, 32, 0, Some(0))] };
        let ended = ended.to_published(64).expect("ended");
        assert!(!ended[0].trusted_at(0) && !ended[0].trusted_at(i64::MAX), "an end of 0 is an end");
        assert_eq!(IssuerKeySet::from_published(&ended).keys[0].trusted_until_unix_secs, Some(0), "and stays one");
    }
}
