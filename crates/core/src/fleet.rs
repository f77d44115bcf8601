//! Which validators a gateway speaks for. A gateway's certificate, issued
//! by the fleet CA when it was enrolled, names it and lists the prefixes of
//! the validator ids behind it; a scan from any other validator is refused
//! (`foreign_validator`), so one gateway's key cannot upload rides in
//! another depot's name.

/// Longest gateway id or validator prefix an enrolment accepts, in bytes.
pub const FLEET_NAME_BYTES_MAX: usize = 128;

/// One enrolled gateway: its id and the validators it speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayScope {
    gateway_id: String,
    validator_prefixes: Vec<String>,
}

/// Why a name cannot be enrolled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetNameError {
    /// A gateway id must not be empty.
    #[error("a gateway id must not be empty")]
    EmptyGatewayId,
    /// A gateway id or validator prefix over [`FLEET_NAME_BYTES_MAX`].
    #[error("{what} is {len} bytes, the limit is {max}")]
    TooLong {
        /// Which name.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// [`FLEET_NAME_BYTES_MAX`].
        max: usize,
    },
    /// A character a certificate field cannot carry unambiguously.
    #[error("{what} {name:?} has {bad:?}; use letters, digits and . _ - / : only")]
    BadCharacter {
        /// Which name.
        what: &'static str,
        /// The name as given.
        name: String,
        /// The first character refused.
        bad: char,
    },
}

impl GatewayScope {
    /// A gateway that speaks for the validators whose ids start with one
    /// of `validator_prefixes` (an empty prefix: every validator).
    pub fn new(gateway_id: &str, validator_prefixes: Vec<String>) -> Result<GatewayScope, FleetNameError> {
        if gateway_id.is_empty() {
            return Err(FleetNameError::EmptyGatewayId);
        }
        check_name("gateway id", gateway_id, |c| c.is_ascii_alphanumeric() || "._-".contains(c))?;
        for prefix in &validator_prefixes {
            check_name("validator prefix", prefix, |c| c.is_ascii_alphanumeric() || "._-/:".contains(c))?;
        }
        Ok(GatewayScope { gateway_id: gateway_id.to_string(), validator_prefixes })
    }

    /// The scope enrolment gives a gateway unless told otherwise: the
    /// validators named `GATEWAY_ID/…`. `/` cannot appear in a gateway id,
    /// so no gateway's default covers another's validators.
    pub fn default_for(gateway_id: &str) -> Result<GatewayScope, FleetNameError> {
        GatewayScope::new(gateway_id, vec![format!("{gateway_id}/")])
    }

    /// A gateway that speaks for every validator, whatever its id: what
    /// [`crate::ingest::Pipeline::process`] assumes (tests and benches
    /// that have no certificate to read a scope from).
    pub fn every_validator(gateway_id: &str) -> GatewayScope {
        GatewayScope { gateway_id: gateway_id.to_string(), validator_prefixes: vec![String::new()] }
    }

    /// The gateway's id, as its certificate names it.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// The prefixes of the validator ids it speaks for.
    pub fn validator_prefixes(&self) -> &[String] {
        &self.validator_prefixes
    }

    /// Whether a scan from `validator_id` may come through this gateway.
    pub fn speaks_for(&self, validator_id: &str) -> bool {
        self.validator_prefixes.iter().any(|prefix| validator_id.starts_with(prefix.as_str()))
    }
}

fn check_name(what: &'static str, name: &str, allowed: impl Fn(char) -> bool) -> Result<(), FleetNameError> {
    if name.len() > FLEET_NAME_BYTES_MAX {
        return Err(FleetNameError::TooLong { what, len: name.len(), max: FLEET_NAME_BYTES_MAX });
    }
    match name.chars().find(|c| !allowed(*c)) {
        Some(bad) => Err(FleetNameError::BadCharacter { what, name: name.to_string(), bad }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_speaks_only_for_validators_under_its_prefixes() {
        let scope = GatewayScope::new("depot-1", vec!["depot-1/".into(), "bus-7".into()]).expect("scope");
        assert!(scope.speaks_for("depot-1/gate-3"));
        assert!(scope.speaks_for("bus-7"));
        assert!(scope.speaks_for("bus-77"), "a prefix, not a whole id");
        assert!(!scope.speaks_for("depot-10/gate-3"));
        assert!(!scope.speaks_for("depot-1"), "the prefix's separator is part of it");
        assert!(!scope.speaks_for(""));
        let none = GatewayScope::new("depot-1", vec![]).expect("scope");
        assert!(!none.speaks_for("depot-1/gate-3"), "no prefixes: no validators");
        let all = GatewayScope::new("depot-1", vec![String::new()]).expect("scope");
        assert!(all.speaks_for("") && all.speaks_for("anything"));
        // Review: with `NAME-` as the default, depot-1 spoke for depot-1-north's validators.
        let (one, north) = (GatewayScope::default_for("depot-1"), GatewayScope::default_for("depot-1-north"));
        let (one, north) = (one.expect("scope"), north.expect("scope"));
        assert!(north.speaks_for("depot-1-north/gate-1") && !one.speaks_for("depot-1-north/gate-1"));
        assert!(one.speaks_for("depot-1/gate-1") && !north.speaks_for("depot-1/gate-1"));
    }

    #[test]
    fn names_are_checked_at_their_extremes() {
        assert_eq!(GatewayScope::new("", vec![]), Err(FleetNameError::EmptyGatewayId));
        let longest = "g".repeat(FLEET_NAME_BYTES_MAX);
        assert!(GatewayScope::new(&longest, vec![longest.clone()]).is_ok());
        let over = "g".repeat(FLEET_NAME_BYTES_MAX + 1);
        assert!(matches!(GatewayScope::new(&over, vec![]), Err(FleetNameError::TooLong { len: 129, .. })));
        assert!(matches!(
            GatewayScope::new("g", vec![over]),
            Err(FleetNameError::TooLong { what: "validator prefix", .. })
        ));
        for bad in ["depot 1", "depot/1", "dépôt", "a\0b", "a,b"] {
            assert!(matches!(GatewayScope::new(bad, vec![]), Err(FleetNameError::BadCharacter { .. })), "{bad}");
        }
        assert!(matches!(
            GatewayScope::new("g", vec!["v*".into()]),
            Err(FleetNameError::BadCharacter { bad: '*', .. })
        ));
    }
}
