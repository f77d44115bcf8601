//! The checks a ride code must pass, shared by the validator's offline check
//! and the server's pipeline so that both decide alike. Pure functions:
//! time is an argument, nothing here reads a clock.

use std::collections::HashSet;

use thiserror::Error;

use super::format::{DecodeError, RideCode};
use super::keys::IssuerPublicKeys;
use super::sealed::{SEALED_FORMAT_VERSION, open};
use super::terminal::TerminalKeys;
use super::verify::{SignatureCheck, is_weak_public_key, verify_single};
use crate::scan::ScanStatus;

/// The ride-code rules that depend on time, against the clock of whoever
/// checks the code: how fresh it must be, and from when a code that is not
/// sealed (version 1) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshnessPolicy {
    /// How long a code is good after the phone made it. Phones refresh the
    /// code on screen about every minute.
    pub code_validity_secs: u32,
    /// How far the phone's and the validator's clocks may disagree.
    pub clock_skew_secs: u32,
    /// The longest window an issued credential may have: a longer one
    /// (a credential "valid for 136 years") is refused wherever it is shown.
    pub credential_validity_secs: u32,
    /// From this moment (Unix seconds, by the reader's clock) a version-1
    /// code, which anyone can read, is refused (`format_retired`); `None`
    /// while both versions are read.
    pub unsealed_refused_from_secs: Option<u32>,
}

/// Cards that must not ride. The server's list changes as arrears come and go.
pub trait DenyList {
    /// True when `card_id` must not ride.
    fn is_denied(&self, card_id: u64) -> bool;
}

impl DenyList for HashSet<u64> {
    fn is_denied(&self, card_id: u64) -> bool {
        self.contains(&card_id)
    }
}

/// The deny list when the gate already decided: nobody on it.
pub struct NobodyDenied;

impl DenyList for NobodyDenied {
    fn is_denied(&self, _card_id: u64) -> bool {
        false
    }
}

/// Which signature failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFault {
    /// The issuer's signature over the credential.
    Issuer,
    /// The user's signature over the code.
    User,
    /// The credential names a user key that is not a safe point.
    WeakUserKey,
}

/// Why a ride code is refused. Each maps to one archive status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Rejection {
    /// The bytes are not a ride code of a version this build reads.
    #[error("malformed ride code: {0}")]
    Malformed(#[from] DecodeError),
    /// A sealed code that does not open under the terminal key it names:
    /// altered (a bit in its nonce, content or tag), or sealed under another key.
    #[error("sealed ride code does not open under terminal key {key_id}: altered, or sealed under another key")]
    Undecryptable {
        /// The terminal key id its header names.
        key_id: u16,
    },
    /// A sealed code names a terminal key that is not held, and not one that ran out.
    #[error("terminal key {key_id} is not held here: never issued, or not received yet")]
    UnknownTerminalKey {
        /// The terminal key id its header names.
        key_id: u16,
    },
    /// A sealed code names a terminal key that ran out: made before a key
    /// held, or kept since it ran out to read the code's card.
    #[error("terminal key {key_id} ran out: no longer trusted")]
    ExpiredTerminalKey {
        /// The terminal key id its header names.
        key_id: u16,
    },
    /// A version-1 code, which anyone can read, read after version 1 was retired.
    #[error("version 1 ride codes are refused from {refused_from} (Unix seconds); this one was read at {at}")]
    FormatRetired {
        /// `unsealed_refused_from_secs`.
        refused_from: u32,
        /// When it was read, Unix seconds.
        at: u32,
    },
    /// The credential names an issuer key that is not trusted here (retired, or never issued).
    #[error("issuer key {key_id} is not trusted")]
    UnknownIssuerKey {
        /// The key id the credential names.
        key_id: u32,
    },
    /// A signature does not verify, or the user key is weak: a forgery or a damaged code.
    #[error("bad signature: {0:?}")]
    BadSignature(SignatureFault),
    /// The code was read outside the credential's window, skew allowed.
    #[error("credential valid [{valid_from}, {valid_until}) is not valid at {at}")]
    ExpiredCredential {
        /// Start of the credential's window, Unix seconds, inclusive.
        valid_from: u32,
        /// End of the credential's window, Unix seconds, exclusive.
        valid_until: u32,
        /// When the code was read, by the validator's clock, Unix seconds.
        at: u32,
    },
    /// The credential's window is longer than policy allows; archived as `expired_credential`.
    #[error("credential valid [{valid_from}, {valid_until}) is longer than the {max_secs} s a credential may be")]
    CredentialTooLong {
        /// Start of the credential's window, Unix seconds, inclusive.
        valid_from: u32,
        /// End of the credential's window, Unix seconds, exclusive.
        valid_until: u32,
        /// The longest window allowed, `credential_validity_secs`.
        max_secs: u32,
    },
    /// The code was made too long before it was read, or ahead of the clock it was checked against by more
    /// than the skew.
    #[error("code made at {created_at} is stale at {at}")]
    StaleCode {
        /// When the phone made the code, Unix seconds.
        created_at: u32,
        /// Unix seconds of the clock it failed against: the scan's, or the arrival's for a scan from the future.
        at: u32,
    },
    /// The scan arrived later than the accepted lateness after it was read, so it is not a ride (server only).
    #[error("read at {scanned_at_ms} ms, uploaded at {received_at_ms} ms: later than the accepted lateness")]
    LateUpload {
        /// The validator's clock when it read the code, Unix milliseconds.
        scanned_at_ms: i64,
        /// The server's clock when the batch arrived, Unix milliseconds.
        received_at_ms: i64,
    },
    /// The card is on the deny list (unpaid arrears).
    #[error("card {card_id} is denied")]
    Denied {
        /// The card refused.
        card_id: u64,
    },
    /// The gateway says the gate refused the code, so no ride happened; archived as `denied`.
    #[error("the gate refused card {card_id}: not a ride")]
    GateRefused {
        /// The card the gate refused.
        card_id: u64,
    },
}

impl Rejection {
    /// The archive status this rejection is filed under.
    pub fn status(&self) -> ScanStatus {
        match self {
            Rejection::Malformed(_) => ScanStatus::Malformed,
            Rejection::Undecryptable { .. } => ScanStatus::Undecryptable,
            Rejection::UnknownTerminalKey { .. } => ScanStatus::UnknownTerminalKey,
            Rejection::ExpiredTerminalKey { .. } => ScanStatus::ExpiredTerminalKey,
            Rejection::FormatRetired { .. } => ScanStatus::FormatRetired,
            Rejection::UnknownIssuerKey { .. } => ScanStatus::UnknownIssuerKey,
            Rejection::BadSignature(_) => ScanStatus::BadSignature,
            Rejection::ExpiredCredential { .. } | Rejection::CredentialTooLong { .. } => ScanStatus::ExpiredCredential,
            Rejection::StaleCode { .. } => ScanStatus::StaleCode,
            Rejection::LateUpload { .. } => ScanStatus::LateUpload,
            Rejection::Denied { .. } | Rejection::GateRefused { .. } => ScanStatus::Denied,
        }
    }
}

/// The validator's offline check: open or decode, both signatures, the
/// credential window, freshness against the validator clock, the deny list.
pub fn check_offline(
    input: &[u8],
    issuer_keys: &IssuerPublicKeys,
    terminal_keys: &TerminalKeys,
    deny_list: &impl DenyList,
    policy: &FreshnessPolicy,
    validator_now: u32,
) -> Result<RideCode, Rejection> {
    let code = read_code(input, terminal_keys, policy, validator_now)?;
    let issuer_key = issuer_key_for(&code, issuer_keys)?;
    check_credential_signature(&code, issuer_key, verify_single)?;
    if !verify_single(&user_signature_check(&code)) {
        return Err(Rejection::BadSignature(SignatureFault::User));
    }
    check_claims(&code, deny_list, policy, validator_now)?;
    Ok(code)
}

/// Reads a code of either version read at `at` (Unix seconds): a sealed one
/// is opened with the terminal key it names, refused where that key's
/// trust had ended at `at`; a version-1 one is decoded, and refused once
/// `unsealed_refused_from_secs` has come. Shape and seal only:
/// no signature is checked here, so a code refused here costs none.
pub fn read_code(
    input: &[u8],
    terminal_keys: &TerminalKeys,
    policy: &FreshnessPolicy,
    at: u32,
) -> Result<RideCode, Rejection> {
    let code = open_code(input, terminal_keys, i64::from(at))?;
    check_format_in_force(input, policy, at)?;
    Ok(code)
}

/// Opens a sealed code read at `read_at_secs` (the validator's time),
/// refused where its key's trust had ended by then; or decodes a
/// version-1 one, whatever the date: the server reads a retired code's
/// card for its archive row. By the scan's time, not the server's clock:
/// every node that holds or keeps the key gives every copy of a scan one
/// verdict, and a refused code names no card at any node, so in a cluster
/// every copy goes to one partition (docs/scale-out.md).
pub fn open_code(input: &[u8], terminal_keys: &TerminalKeys, read_at_secs: i64) -> Result<RideCode, Rejection> {
    if input.first() == Some(&SEALED_FORMAT_VERSION) {
        let code = open(input, terminal_keys)?;
        super::sealed::check_key_in_force(input, terminal_keys, read_at_secs)?;
        return Ok(code);
    }
    Ok(RideCode::decode(input)?)
}

/// Refuses a version-1 code read at `at` once `unsealed_refused_from_secs`
/// has come (`format_retired`); a sealed code is always in force.
pub fn check_format_in_force(input: &[u8], policy: &FreshnessPolicy, at: u32) -> Result<(), Rejection> {
    match policy.unsealed_refused_from_secs {
        Some(refused_from) if at >= refused_from && input.first() != Some(&SEALED_FORMAT_VERSION) => {
            Err(Rejection::FormatRetired { refused_from, at })
        }
        _ => Ok(()),
    }
}

/// Finds the issuer key the credential names.
pub(crate) fn issuer_key_for<'k>(
    code: &RideCode,
    issuer_keys: &'k IssuerPublicKeys,
) -> Result<&'k [u8; 32], Rejection> {
    let key_id = code.credential.claims.issuer_key_id;
    issuer_keys.get(key_id).ok_or(Rejection::UnknownIssuerKey { key_id })
}

/// The credential is sound when the issuer signed it and the user key it
/// names is safe. `verify` is single or batch verification's answer.
pub(crate) fn check_credential_signature(
    code: &RideCode,
    issuer_key: &[u8; 32],
    verify: impl FnOnce(&SignatureCheck) -> bool,
) -> Result<(), Rejection> {
    if !verify(&issuer_signature_check(code, issuer_key)) {
        return Err(Rejection::BadSignature(SignatureFault::Issuer));
    }
    if is_weak_public_key(&code.credential.claims.user_public_key) {
        return Err(Rejection::BadSignature(SignatureFault::WeakUserKey));
    }
    Ok(())
}

pub(crate) fn issuer_signature_check(code: &RideCode, issuer_key: &[u8; 32]) -> SignatureCheck {
    SignatureCheck {
        public_key: *issuer_key,
        signature: code.credential.issuer_signature,
        message: code.issuer_message(),
    }
}

/// The user's signature over the code, as one check for single or batch verification.
pub fn user_signature_check(code: &RideCode) -> SignatureCheck {
    SignatureCheck {
        public_key: code.credential.claims.user_public_key,
        signature: code.user_signature,
        message: code.user_message(),
    }
}

/// The checks after the signatures, in the order the statuses are documented:
/// credential window, freshness, deny list. `at` is the validator's clock.
pub(crate) fn check_claims(
    code: &RideCode,
    deny_list: &impl DenyList,
    policy: &FreshnessPolicy,
    at: u32,
) -> Result<(), Rejection> {
    let claims = &code.credential.claims;
    if claims.valid_until.saturating_sub(claims.valid_from) > policy.credential_validity_secs {
        let (valid_from, valid_until) = (claims.valid_from, claims.valid_until);
        return Err(Rejection::CredentialTooLong {
            valid_from,
            valid_until,
            max_secs: policy.credential_validity_secs,
        });
    }
    let skew = policy.clock_skew_secs;
    let window_open = claims.valid_from <= at.saturating_add(skew);
    let window_not_closed = at < claims.valid_until.saturating_add(skew);
    if !(window_open && window_not_closed) {
        return Err(Rejection::ExpiredCredential {
            valid_from: claims.valid_from,
            valid_until: claims.valid_until,
            at,
        });
    }
    let too_old = at > code.created_at.saturating_add(policy.code_validity_secs).saturating_add(skew);
    let from_future = code.created_at > at.saturating_add(skew);
    if too_old || from_future {
        return Err(Rejection::StaleCode { created_at: code.created_at, at });
    }
    if deny_list.is_denied(claims.card_id) {
        return Err(Rejection::Denied { card_id: claims.card_id });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ridecode::keys::{IssuerSigningKey, UserKey};

    const POLICY: FreshnessPolicy = FreshnessPolicy {
        code_validity_secs: 60,
        clock_skew_secs: 30,
        credential_validity_secs: 93_600,
        unsealed_refused_from_secs: None,
    };
    const T0: u32 = 1_800_000_000;

    struct Fixture {
        keys: IssuerPublicKeys,
        code: RideCode,
    }

    fn fixture() -> Fixture {
        let issuer = IssuerSigningKey::from_seed(3, &[1; 32]).expect("issuer");
        let user = UserKey::from_seed(&[2; 32]).expect("user");
        let credential = issuer.issue(77, user.public_key(), T0, T0 + 86_400);
        let mut keys = IssuerPublicKeys::new();
        keys.insert(3, issuer.public_key());
        Fixture { keys, code: user.make_code(&credential, T0 + 100, 1) }
    }

    fn check_at(f: &Fixture, bytes: &[u8], deny: &HashSet<u64>, at: u32) -> Result<RideCode, Rejection> {
        check_offline(bytes, &f.keys, &TerminalKeys::new(), deny, &POLICY, at)
    }

    #[test]
    fn a_fresh_code_passes() {
        let f = fixture();
        assert_eq!(check_at(&f, &f.code.bytes, &HashSet::new(), T0 + 120), Ok(f.code));
    }

    #[test]
    fn each_rejection_has_its_own_reason() {
        let f = fixture();
        let none = HashSet::new();
        let mut unknown = f.keys.clone();
        unknown = {
            let mut k = IssuerPublicKeys::new();
            k.insert(4, *unknown.get(3).expect("key 3"));
            k
        };
        assert_eq!(
            check_offline(&f.code.bytes, &unknown, &TerminalKeys::new(), &none, &POLICY, T0 + 120),
            Err(Rejection::UnknownIssuerKey { key_id: 3 })
        );
        let mut forged = f.code.bytes;
        forged[188] ^= 1;
        assert_eq!(check_at(&f, &forged, &none, T0 + 120), Err(Rejection::BadSignature(SignatureFault::User)));
        assert!(matches!(check_at(&f, &f.code.bytes, &none, T0 + 200), Err(Rejection::StaleCode { .. })));
        assert!(matches!(check_at(&f, &f.code.bytes, &none, T0 + 50), Err(Rejection::StaleCode { .. })));
        assert!(matches!(check_at(&f, &f.code.bytes, &none, T0 + 90_000), Err(Rejection::ExpiredCredential { .. })));
        let deny: HashSet<u64> = [77].into();
        assert_eq!(check_at(&f, &f.code.bytes, &deny, T0 + 120), Err(Rejection::Denied { card_id: 77 }));
        assert!(matches!(check_at(&f, &f.code.bytes[..10], &none, T0 + 120), Err(Rejection::Malformed(_))));
    }

    /// Issue 10: a credential valid for 136 years was accepted at the gate
    /// and by the server. A window longer than the policy's is refused.
    #[test]
    fn a_credential_longer_than_the_policy_allows_is_refused() {
        let issuer = IssuerSigningKey::from_seed(3, &[1; 32]).expect("issuer");
        let user = UserKey::from_seed(&[2; 32]).expect("user");
        let mut keys = IssuerPublicKeys::new();
        keys.insert(3, issuer.public_key());
        let none = HashSet::new();
        for (valid_until, refused) in [(T0 + 93_600, false), (T0 + 93_601, true), (u32::MAX, true)] {
            let credential = issuer.issue(77, user.public_key(), T0, valid_until);
            let code = user.make_code(&credential, T0 + 100, 1);
            let verdict = check_offline(&code.bytes, &keys, &TerminalKeys::new(), &none, &POLICY, T0 + 120);
            assert_eq!(
                matches!(verdict, Err(Rejection::CredentialTooLong { .. })),
                refused,
                "{valid_until}: {verdict:?}"
            );
            if refused {
                assert_eq!(verdict.expect_err("refused").status(), ScanStatus::ExpiredCredential);
            }
        }
    }

    /// Both versions are read until the cut-off; from it a version-1 code is
    /// refused by its own status, and a sealed one still rides.
    #[test]
    fn a_version_1_code_is_refused_from_the_cut_off_and_a_sealed_one_still_rides() {
        let f = fixture();
        let mut terminal = TerminalKeys::new();
        terminal.insert(crate::ridecode::TerminalKey::from_secret(9, &[9; 32]));
        let sealed = crate::ridecode::seal(&f.code, terminal.get(9).expect("key 9"));
        let cut_off = FreshnessPolicy { unsealed_refused_from_secs: Some(T0 + 120), ..POLICY };
        let none = HashSet::new();
        let check =
            |bytes: &[u8], policy: &FreshnessPolicy, at| check_offline(bytes, &f.keys, &terminal, &none, policy, at);
        assert_eq!(check(&f.code.bytes, &POLICY, T0 + 120), Ok(f.code), "no cut-off configured");
        assert_eq!(check(&f.code.bytes, &cut_off, T0 + 119), Ok(f.code), "a second before it");
        let refused = check(&f.code.bytes, &cut_off, T0 + 120);
        assert_eq!(refused, Err(Rejection::FormatRetired { refused_from: T0 + 120, at: T0 + 120 }));
        assert_eq!(refused.expect_err("refused").status(), ScanStatus::FormatRetired);
        assert_eq!(check(&sealed, &cut_off, T0 + 120), Ok(f.code), "the same code sealed");
        assert!(matches!(check(&f.code.bytes[..5], &cut_off, T0 + 120), Err(Rejection::Malformed(_))), "shape first");
    }

    #[test]
    fn freshness_edges_allow_skew() {
        let f = fixture();
        let none = HashSet::new();
        // Made at T0+100, good for 60 s, 30 s of skew either way.
        assert!(check_at(&f, &f.code.bytes, &none, T0 + 190).is_ok());
        assert!(check_at(&f, &f.code.bytes, &none, T0 + 191).is_err());
        assert!(check_at(&f, &f.code.bytes, &none, T0 + 70).is_ok());
        assert!(check_at(&f, &f.code.bytes, &none, T0 + 69).is_err());
    }
}
