//! The ride-code wire format, version 1. `docs/ride-code.md` documents every
//! byte; this module is the one place that reads and writes them.
//!
//! A ride code is a credential (signed by an issuer key) followed by the time
//! the code was made, a counter and the user's signature over everything
//! before it. All integers are big-endian; times are Unix seconds.
//!
//! ```text
//! offset size field
//!      0    1 version            = 0x01
//!      1    4 issuer_key_id      u32
//!      5    8 card_id            u64 (issued up to 2^63 - 1)
//!     13   32 user_public_key    Ed25519
//!     45    4 valid_from         u32 Unix seconds, inclusive
//!     49    4 valid_until        u32 Unix seconds, exclusive
//!     53   64 issuer_signature   over CREDENTIAL_DOMAIN || bytes[0..53]
//!    117    4 created_at         u32 Unix seconds
//!    121    4 counter            u32
//!    125   64 user_signature     over RIDE_CODE_DOMAIN || bytes[0..125]
//!    189      end
//! ```

use thiserror::Error;

/// The only format version this build reads and writes.
pub(crate) const FORMAT_VERSION: u8 = 0x01;
/// Length of a version-1 ride code. A QR code at error-correction level M
/// holds 213 bytes at version 10, which a phone screen shows and a gate reads
/// comfortably; the issue's budget is 200 bytes.
pub const RIDE_CODE_LEN: usize = 189;
/// Length of the credential, issuer signature included.
pub(crate) const CREDENTIAL_LEN: usize = 117;
/// Bytes of the credential that the issuer signs (after the domain prefix).
pub const CREDENTIAL_SIGNED_LEN: usize = 53;
/// Bytes of the code that the user signs (after the domain prefix).
pub const CODE_SIGNED_LEN: usize = 125;

/// Domain separation: a signature made for one purpose never verifies for
/// another, even if the bytes happened to line up.
pub const CREDENTIAL_DOMAIN: &[u8] = b"farestream/credential/v1\0";
/// Domain prefix of the code message, which the user key signs; the credential's is [`CREDENTIAL_DOMAIN`].
pub const RIDE_CODE_DOMAIN: &[u8] = b"farestream/ride-code/v1\0";

/// The claims an issuer signs once a day for one rider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialClaims {
    /// Which issuer key signs the credential.
    pub issuer_key_id: u32,
    /// The rider's card: issued up to 2^63 - 1, though a card issued before that limit may use all 64 bits.
    pub card_id: u64,
    /// Ed25519 public key of the rider's user key for this window.
    pub user_public_key: [u8; 32],
    /// Start of the window, Unix seconds, inclusive.
    pub valid_from: u32,
    /// End of the window, Unix seconds, exclusive.
    pub valid_until: u32,
}

/// A credential as carried inside a ride code: claims plus issuer signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    /// What the issuer signed.
    pub claims: CredentialClaims,
    pub(crate) issuer_signature: [u8; 64],
}

/// A decoded ride code. Decoding checks only the shape; signatures and
/// windows are checked by [`super::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RideCode {
    /// The day's credential the code carries.
    pub credential: Credential,
    /// When the phone made the code, Unix seconds by its clock.
    pub created_at: u32,
    /// The phone's code counter; with `card_id` and `created_at` it names the code.
    pub counter: u32,
    pub(crate) user_signature: [u8; 64],
    /// The exact bytes decoded, kept so signatures are checked over what
    /// arrived rather than over a re-encoding.
    pub bytes: [u8; RIDE_CODE_LEN],
}

/// Why bytes are not a version-1 ride code or credential; a scan whose code fails here is `malformed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The code is not exactly [`RIDE_CODE_LEN`] bytes.
    #[error("ride code is {actual} bytes, version 1 codes are exactly {RIDE_CODE_LEN}")]
    WrongLength {
        /// The length that arrived, in bytes.
        actual: usize,
    },
    /// The credential is not exactly 117 bytes.
    #[error("credential is {actual} bytes, version 1 credentials are exactly {CREDENTIAL_LEN}")]
    CredentialWrongLength {
        /// The length that arrived, in bytes.
        actual: usize,
    },
    /// The first byte names a format version this build does not read.
    #[error("ride code format version {0:#04x} is not supported (1 and 2 are)")]
    UnsupportedVersion(u8),
    /// A sealed (version 2) code is not exactly [`SEALED_CODE_LEN`](super::sealed::SEALED_CODE_LEN) bytes.
    #[error("sealed ride code is {actual} bytes, version 2 codes are exactly {}", super::sealed::SEALED_CODE_LEN)]
    SealedWrongLength {
        /// The length that arrived, in bytes.
        actual: usize,
    },
}

impl CredentialClaims {
    /// The bytes an issuer signs: version byte and claims, without the domain.
    pub(crate) fn signed_bytes(&self) -> [u8; CREDENTIAL_SIGNED_LEN] {
        let mut out = [0u8; CREDENTIAL_SIGNED_LEN];
        out[0] = FORMAT_VERSION;
        out[1..5].copy_from_slice(&self.issuer_key_id.to_be_bytes());
        out[5..13].copy_from_slice(&self.card_id.to_be_bytes());
        out[13..45].copy_from_slice(&self.user_public_key);
        out[45..49].copy_from_slice(&self.valid_from.to_be_bytes());
        out[49..53].copy_from_slice(&self.valid_until.to_be_bytes());
        out
    }

    /// The full message the issuer signs: domain prefix, then claims.
    pub(crate) fn signing_message(&self) -> Vec<u8> {
        prefixed(CREDENTIAL_DOMAIN, &self.signed_bytes())
    }
}

impl Credential {
    /// The credential's 117 bytes, as a ride code carries them and the account API hands them out.
    pub fn to_bytes(&self) -> [u8; CREDENTIAL_LEN] {
        let mut out = [0u8; CREDENTIAL_LEN];
        out[..CREDENTIAL_SIGNED_LEN].copy_from_slice(&self.claims.signed_bytes());
        out[CREDENTIAL_SIGNED_LEN..].copy_from_slice(&self.issuer_signature);
        out
    }

    /// A credential as the account API hands it out; shape only, as for codes.
    pub fn decode(input: &[u8]) -> Result<Credential, DecodeError> {
        if let Some(&version) = input.first()
            && version != FORMAT_VERSION
        {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let bytes: &[u8; CREDENTIAL_LEN] =
            input.try_into().map_err(|_| DecodeError::CredentialWrongLength { actual: input.len() })?;
        let card_id = u64::from_be_bytes(array(&bytes[5..13]));
        let claims = CredentialClaims {
            issuer_key_id: be_u32(&bytes[1..5]),
            card_id,
            user_public_key: array(&bytes[13..45]),
            valid_from: be_u32(&bytes[45..49]),
            valid_until: be_u32(&bytes[49..53]),
        };
        Ok(Credential { claims, issuer_signature: array(&bytes[CREDENTIAL_SIGNED_LEN..]) })
    }
}

impl RideCode {
    /// Assembles a code from its parts; `user_signature` must be over
    /// [`RideCode::unsigned_bytes`] of the same parts.
    pub fn assemble(credential: &Credential, created_at: u32, counter: u32, user_signature: [u8; 64]) -> RideCode {
        let mut bytes = [0u8; RIDE_CODE_LEN];
        bytes[..CODE_SIGNED_LEN].copy_from_slice(&Self::unsigned_bytes(credential, created_at, counter));
        bytes[CODE_SIGNED_LEN..].copy_from_slice(&user_signature);
        RideCode { credential: *credential, created_at, counter, user_signature, bytes }
    }

    /// The bytes a user signs (after the domain prefix).
    pub(crate) fn unsigned_bytes(credential: &Credential, created_at: u32, counter: u32) -> [u8; CODE_SIGNED_LEN] {
        let mut out = [0u8; CODE_SIGNED_LEN];
        out[..CREDENTIAL_LEN].copy_from_slice(&credential.to_bytes());
        out[117..121].copy_from_slice(&created_at.to_be_bytes());
        out[121..125].copy_from_slice(&counter.to_be_bytes());
        out
    }

    /// The full message the user signs: domain prefix, then the code.
    pub(crate) fn signing_message_for(credential: &Credential, created_at: u32, counter: u32) -> Vec<u8> {
        prefixed(RIDE_CODE_DOMAIN, &Self::unsigned_bytes(credential, created_at, counter))
    }

    /// The message the user signature of this code must verify over.
    pub(crate) fn user_message(&self) -> Vec<u8> {
        prefixed(RIDE_CODE_DOMAIN, &self.bytes[..CODE_SIGNED_LEN])
    }

    /// The message the issuer signature of this code must verify over.
    pub(crate) fn issuer_message(&self) -> Vec<u8> {
        prefixed(CREDENTIAL_DOMAIN, &self.bytes[..CREDENTIAL_SIGNED_LEN])
    }

    /// The credential exactly as it arrived, the key of the verified-credential cache.
    pub(crate) fn credential_bytes(&self) -> [u8; CREDENTIAL_LEN] {
        let mut out = [0u8; CREDENTIAL_LEN];
        out.copy_from_slice(&self.bytes[..CREDENTIAL_LEN]);
        out
    }

    /// Reads a code's bytes, checking only their shape: signatures and windows are [`super::check`]'s.
    pub fn decode(input: &[u8]) -> Result<RideCode, DecodeError> {
        // The version is checked first so a future longer format gets the
        // more useful error.
        if let Some(&version) = input.first()
            && version != FORMAT_VERSION
        {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let bytes: [u8; RIDE_CODE_LEN] =
            input.try_into().map_err(|_| DecodeError::WrongLength { actual: input.len() })?;
        Ok(RideCode {
            credential: Credential::decode(&bytes[..CREDENTIAL_LEN])?,
            created_at: be_u32(&bytes[117..121]),
            counter: be_u32(&bytes[121..125]),
            user_signature: array(&bytes[125..189]),
            bytes,
        })
    }
}

fn prefixed(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + body.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(body);
    message
}

fn be_u32(slice: &[u8]) -> u32 {
    u32::from_be_bytes(array(slice))
}

/// Copies a slice whose length the caller has fixed by construction.
fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RideCode {
        let claims = CredentialClaims {
            issuer_key_id: 7,
            card_id: 0x0102_0304_0506_0708,
            user_public_key: [0xAB; 32],
            valid_from: 1_000,
            valid_until: 2_000,
        };
        let credential = Credential { claims, issuer_signature: [0x11; 64] };
        RideCode::assemble(&credential, 1_500, 42, [0x22; 64])
    }

    #[test]
    fn decode_round_trips_assemble() {
        let code = sample();
        assert_eq!(RideCode::decode(&code.bytes), Ok(code));
    }

    #[test]
    fn decode_rejects_other_lengths_and_versions() {
        let code = sample();
        assert_eq!(RideCode::decode(&code.bytes[..188]), Err(DecodeError::WrongLength { actual: 188 }));
        let mut bumped = code.bytes;
        bumped[0] = 2;
        assert_eq!(RideCode::decode(&bumped), Err(DecodeError::UnsupportedVersion(2)), "sealed codes are opened first");
        assert_eq!(RideCode::decode(&[]), Err(DecodeError::WrongLength { actual: 0 }));
    }

    #[test]
    fn a_credential_round_trips_and_any_other_length_or_version_is_refused() {
        let credential = sample().credential;
        assert_eq!(Credential::decode(&credential.to_bytes()), Ok(credential));
        for length in [0, 1, CREDENTIAL_LEN - 1, CREDENTIAL_LEN + 1, RIDE_CODE_LEN] {
            let mut bytes = vec![FORMAT_VERSION; length];
            bytes.truncate(length);
            assert_eq!(Credential::decode(&bytes), Err(DecodeError::CredentialWrongLength { actual: length }));
        }
        let mut other_version = credential.to_bytes();
        other_version[0] = 2;
        assert_eq!(Credential::decode(&other_version), Err(DecodeError::UnsupportedVersion(2)));
    }

    /// Cards issued before ids were kept within 2^63 - 1 still ride.
    #[test]
    fn a_card_id_at_any_of_its_64_bits_decodes() {
        let with_card = |card_id: u64| {
            let mut code = sample();
            code.credential.claims.card_id = card_id;
            RideCode::assemble(&code.credential, code.created_at, code.counter, code.user_signature).bytes
        };
        for card_id in [0, crate::scan::ID_MAX, crate::scan::ID_MAX + 1, u64::MAX] {
            assert_eq!(RideCode::decode(&with_card(card_id)).map(|c| c.credential.claims.card_id), Ok(card_id));
        }
    }
}
