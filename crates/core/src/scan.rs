//! The scan vocabulary shared by the wire, the pipeline and the archive.

use std::fmt;

/// What the validator saw the rider do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapKind {
    /// Metro gate on the way in.
    Entry,
    /// Metro gate on the way out.
    Exit,
    /// A bus or any flat-fare validator: one tap per ride.
    Single,
}

impl TapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TapKind::Entry => "entry",
            TapKind::Exit => "exit",
            TapKind::Single => "single",
        }
    }

    pub fn parse(name: &str) -> Option<TapKind> {
        [TapKind::Entry, TapKind::Exit, TapKind::Single].into_iter().find(|k| k.as_str() == name)
    }

    /// An entry or an exit: a tap that begins or ends a metro trip.
    pub fn is_metro(self) -> bool {
        self != TapKind::Single
    }
}

/// The outcome of one scan, as archived. The names are the archive's
/// `status` column values; analysts filter on them, so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScanStatus {
    Accepted,
    Replay,
    BadSignature,
    ExpiredCredential,
    StaleCode,
    Denied,
    UnknownIssuerKey,
    Malformed,
    /// Read on time but uploaded later than the accepted lateness: its
    /// replays could no longer be caught, so it is not a ride.
    LateUpload,
}

impl ScanStatus {
    pub const ALL: [ScanStatus; 9] = [
        ScanStatus::Accepted,
        ScanStatus::Replay,
        ScanStatus::BadSignature,
        ScanStatus::ExpiredCredential,
        ScanStatus::StaleCode,
        ScanStatus::Denied,
        ScanStatus::UnknownIssuerKey,
        ScanStatus::Malformed,
        ScanStatus::LateUpload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScanStatus::Accepted => "accepted",
            ScanStatus::Replay => "replay",
            ScanStatus::BadSignature => "bad_signature",
            ScanStatus::ExpiredCredential => "expired_credential",
            ScanStatus::StaleCode => "stale_code",
            ScanStatus::Denied => "denied",
            ScanStatus::UnknownIssuerKey => "unknown_issuer_key",
            ScanStatus::Malformed => "malformed",
            ScanStatus::LateUpload => "late_upload",
        }
    }

    pub fn parse(name: &str) -> Option<ScanStatus> {
        ScanStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for ScanStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest id every reader of the archive holds as a number: Spark,
/// Trino, BigQuery and Java have signed 64-bit integers only. The issuer
/// issues card ids up to this; a scan record whose validator sequence
/// number or deny-list version is larger is malformed. Card ids issued
/// before (they used all 64 bits) keep working and are archived as the
/// same 64 bits in a signed column, that is as negative numbers
/// ([`id_to_archive`]).
pub const ID_MAX: u64 = i64::MAX as u64;

/// An id as the archives' `Int64` columns hold it: the same 64 bits, so
/// every id up to [`ID_MAX`] reads as itself and a card id issued before
/// ids were kept within it reads as a negative number, exactly and
/// distinctly (`CAST(card_id AS UBIGINT)` in DuckDB gives it back).
pub fn id_to_archive(id: u64) -> i64 {
    id as i64
}

/// The inverse of [`id_to_archive`].
pub fn id_from_archive(value: i64) -> u64 {
    value as u64
}

impl ArchivedScan {
    /// A row with every field empty: what a reader fills in column by
    /// column, and a base for tests.
    pub fn blank() -> ArchivedScan {
        ArchivedScan {
            scan_id: [0; 16],
            gateway_id: std::sync::Arc::from(""),
            validator_id: String::new(),
            validator_seq: 0,
            route_id: String::new(),
            stop_id: String::new(),
            tap_kind: None,
            card_id: None,
            issuer_key_id: None,
            code_created_at: None,
            code_counter: None,
            scanned_at: 0,
            received_at: 0,
            status: ScanStatus::Malformed,
            reason: None,
            service_date: chrono::NaiveDate::default(),
            gate_opened: None,
            deny_list_version: None,
        }
    }
}

/// One archive row: a scan as received, with the server's verdict. Fields
/// taken from the ride code (`card_id`, `issuer_key_id`, `code_*`) are set
/// whenever the code decoded, even when a check failed: an analyst looking
/// at forgeries wants the card they claimed. Only `accepted` rows are
/// trustworthy claims.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedScan {
    /// Content fingerprint of the scan; the same scan always gets the same id.
    pub scan_id: [u8; 16],
    /// Shared by every row of a batch: one copy however many rows.
    pub gateway_id: std::sync::Arc<str>,
    pub validator_id: String,
    pub validator_seq: u64,
    pub route_id: String,
    pub stop_id: String,
    /// `None` when the record carried no valid tap kind (then it is malformed).
    pub tap_kind: Option<TapKind>,
    pub card_id: Option<u64>,
    pub issuer_key_id: Option<u32>,
    pub code_created_at: Option<crate::clock::UnixMillis>,
    pub code_counter: Option<u32>,
    /// The validator's clock when it read the code.
    pub scanned_at: crate::clock::UnixMillis,
    /// The server's clock when the batch arrived.
    pub received_at: crate::clock::UnixMillis,
    pub status: ScanStatus,
    /// Why the scan got its status, for every status but `accepted`.
    pub reason: Option<String>,
    /// Whether the validator's gate opened; `None` when the gateway did not say.
    pub gate_opened: Option<bool>,
    /// The deny list version the validator held, when the gateway said.
    pub deny_list_version: Option<u64>,
    /// The service day of `scanned_at`.
    pub service_date: chrono::NaiveDate,
}
