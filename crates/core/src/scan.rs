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
    /// The name the archive and the stores hold: `entry`, `exit` or `single`.
    pub fn as_str(self) -> &'static str {
        match self {
            TapKind::Entry => "entry",
            TapKind::Exit => "exit",
            TapKind::Single => "single",
        }
    }

    /// The tap kind [`TapKind::as_str`] names; `None` for any other name.
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
    /// Every check passed: the tap counts towards a ride, which is charged once.
    Accepted,
    /// The ride code already paid for a ride: not charged again.
    Replay,
    /// A signature does not verify, or the credential names a weak user key.
    BadSignature,
    /// The code was read outside its credential's window, or the window is longer than allowed.
    ExpiredCredential,
    /// The code's time does not fit the scan's, or the scan's is ahead of the server's by more than the skew.
    StaleCode,
    /// The card is on the server's deny list (when the gateway did not say what the gate did), or the gate
    /// refused it: not a ride.
    Denied,
    /// The credential names an issuer key the server does not trust.
    UnknownIssuerKey,
    /// The record or its ride code cannot be read: a bad or missing field, wrong length or unknown version.
    Malformed,
    /// Read on time but uploaded later than the accepted lateness: its
    /// replays could no longer be caught, so it is not a ride.
    LateUpload,
    /// The scan names a validator its gateway's certificate does not speak
    /// for: not a ride, whatever its code says.
    ForeignValidator,
    /// A sealed code that does not open under the terminal key it names:
    /// altered, or sealed under another key.
    Undecryptable,
    /// A sealed code names a terminal key the server does not hold.
    UnknownTerminalKey,
    /// A sealed code names a terminal key that ran out.
    ExpiredTerminalKey,
    /// A version-1 (unsealed) code read after `ride_code.version_1_refused_from_date`.
    FormatRetired,
}

impl ScanStatus {
    /// Every status, in declaration order.
    pub const ALL: [ScanStatus; 14] = [
        ScanStatus::Accepted,
        ScanStatus::Replay,
        ScanStatus::BadSignature,
        ScanStatus::ExpiredCredential,
        ScanStatus::StaleCode,
        ScanStatus::Denied,
        ScanStatus::UnknownIssuerKey,
        ScanStatus::Malformed,
        ScanStatus::LateUpload,
        ScanStatus::ForeignValidator,
        ScanStatus::Undecryptable,
        ScanStatus::UnknownTerminalKey,
        ScanStatus::ExpiredTerminalKey,
        ScanStatus::FormatRetired,
    ];

    /// The archive's `status` value, e.g. `bad_signature`.
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
            ScanStatus::ForeignValidator => "foreign_validator",
            ScanStatus::Undecryptable => "undecryptable",
            ScanStatus::UnknownTerminalKey => "unknown_terminal_key",
            ScanStatus::ExpiredTerminalKey => "expired_terminal_key",
            ScanStatus::FormatRetired => "format_retired",
        }
    }

    /// The status [`ScanStatus::as_str`] names; `None` for any other name.
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
    /// The validator that read the code, cut to `id_bytes_max` bytes.
    pub validator_id: String,
    /// The validator's sequence number for the scan; above [`ID_MAX`] only in a `malformed` row.
    pub validator_seq: u64,
    /// The route the validator reported, cut to `id_bytes_max` bytes.
    pub route_id: String,
    /// The stop or station the validator reported, cut to `id_bytes_max` bytes.
    pub stop_id: String,
    /// `None` when the record carried no valid tap kind (then it is malformed).
    pub tap_kind: Option<TapKind>,
    /// The card the ride code claims.
    pub card_id: Option<u64>,
    /// The issuer key the credential names.
    pub issuer_key_id: Option<u32>,
    /// When the phone made the code, Unix milliseconds (the code holds whole seconds).
    pub code_created_at: Option<crate::clock::UnixMillis>,
    /// The phone's code counter.
    pub code_counter: Option<u32>,
    /// The validator's clock when it read the code.
    pub scanned_at: crate::clock::UnixMillis,
    /// The server's clock when the batch arrived.
    pub received_at: crate::clock::UnixMillis,
    /// The server's verdict.
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
