//! Ride codes: the offline-signed QR payload (version 1), the same sealed
//! for the gate under the day's terminal key (version 2), their keys, and
//! their checks. See `docs/ride-code.md` for the byte layouts and the test
//! vectors.

pub mod check;
pub mod format;
pub mod keys;
pub mod schedule;
pub mod sealed;
pub mod terminal;
pub mod terminal_schedule;
pub mod verify;

pub use check::{
    DenyList, FreshnessPolicy, NobodyDenied, Rejection, SignatureFault, check_format_in_force, check_offline,
    open_code, read_code,
};
pub use format::{Credential, CredentialClaims, DecodeError, RIDE_CODE_LEN, RideCode};
pub use keys::{IssuerPublicKeys, IssuerSigningKey, KeyError, UserKey};
pub use schedule::{IssuerKeySchedule, PublishedKey, ScheduledKey};
pub use sealed::{SEALED_CODE_LEN, seal};
pub use terminal::{TerminalKey, TerminalKeys};
pub use terminal_schedule::{HeldTerminalKey, TerminalKeySchedule};
