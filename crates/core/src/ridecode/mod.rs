//! Ride codes: the offline-signed QR payload, its keys, and its checks.
//! See `docs/ride-code.md` for the byte layout and the test vectors.

pub mod check;
pub mod format;
pub mod keys;
pub mod schedule;
pub mod verify;

pub use check::{DenyList, FreshnessPolicy, NobodyDenied, Rejection, SignatureFault, check_offline};
pub use format::{Credential, CredentialClaims, DecodeError, RIDE_CODE_LEN, RideCode};
pub use keys::{IssuerPublicKeys, IssuerSigningKey, KeyError, UserKey};
pub use schedule::{IssuerKeySchedule, PublishedKey, ScheduledKey};
