//! The simulated city: gateways (bus depots and metro stations), their
//! validators, and riders with today's credentials. Deterministic from a seed.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ridecode::{Credential, IssuerPublicKeys, IssuerSigningKey, KeyError, TerminalKey, TerminalKeys, UserKey};
use crate::scan::TapKind;

/// Key id of the rogue issuer whose credentials nobody trusts.
pub const ROGUE_ISSUER_KEY_ID: u32 = 9_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    /// Buses: one tap per ride, flat fare per route.
    BusDepot,
    /// Metro gates: entry and exit taps.
    MetroStation,
}

#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub id: String,
    pub kind: GatewayKind,
    /// Indexes into [`World::validators`].
    pub validators: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct ValidatorSpec {
    pub id: String,
    pub gateway: usize,
    pub route_id: String,
    /// A metro gate's station; a bus validator's stop changes along its route.
    pub station_id: Option<String>,
}

impl ValidatorSpec {
    /// The stop a scan was read at; `salt` picks a stop on a bus route.
    pub fn stop_id(&self, salt: usize) -> String {
        match &self.station_id {
            Some(station) => station.clone(),
            None => format!("{}-stop-{:02}", self.route_id, salt % 30),
        }
    }
}

pub struct Rider {
    pub card_id: u64,
    pub key: UserKey,
    pub credential: Credential,
}

#[derive(Debug, Clone)]
pub struct WorldSpec {
    pub riders: usize,
    pub gateways: usize,
    pub validators_per_gateway: usize,
    /// Share of riders in arrears, on the deny list all day.
    pub denied_riders_percent: f64,
    pub seed: u64,
}

pub struct World {
    pub gateways: Vec<GatewaySpec>,
    pub validators: Vec<ValidatorSpec>,
    pub riders: Vec<Rider>,
    pub denied_cards: HashSet<u64>,
    pub issuer: IssuerSigningKey,
    pub trusted_keys: IssuerPublicKeys,
    /// The terminal keys the validators open sealed codes with.
    pub terminal_keys: TerminalKeys,
    /// The day's terminal key the riders' apps seal their codes under;
    /// `None`: they show version-1 codes.
    pub sealing_key: Option<TerminalKey>,
    pub credential_valid_from: u32,
    pub credential_valid_until: u32,
    rogue_issuer: IssuerSigningKey,
    seed: u64,
}

impl World {
    /// Builds the city. `issuer` signs today's credentials and must be one
    /// of `trusted_keys`; credentials are valid over `[valid_from, valid_until)`.
    pub fn build(
        spec: &WorldSpec,
        issuer: IssuerSigningKey,
        trusted_keys: IssuerPublicKeys,
        valid_from: u32,
        valid_until: u32,
    ) -> Result<World, KeyError> {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let (gateways, validators) = topology(spec);
        let mut riders = Vec::with_capacity(spec.riders);
        let mut denied_cards = HashSet::new();
        for index in 0..spec.riders {
            let card_id = first_card_id(spec.seed) + index as u64;
            let key = UserKey::from_seed(&rng.random())?;
            let credential = issuer.issue(card_id, key.public_key(), valid_from, valid_until);
            if rng.random_bool((spec.denied_riders_percent / 100.0).clamp(0.0, 1.0)) {
                denied_cards.insert(card_id);
            }
            riders.push(Rider { card_id, key, credential });
        }
        let rogue_issuer = IssuerSigningKey::from_seed(ROGUE_ISSUER_KEY_ID, &rng.random())?;
        Ok(World {
            gateways,
            validators,
            riders,
            denied_cards,
            issuer,
            trusted_keys,
            terminal_keys: TerminalKeys::new(),
            sealing_key: None,
            credential_valid_from: valid_from,
            credential_valid_until: valid_until,
            rogue_issuer,
            seed: spec.seed,
        })
    }

    /// From now on the riders' apps seal their codes under `sealing_key`
    /// (format version 2) and the validators open them with `held`.
    pub fn seal_codes(&mut self, sealing_key: TerminalKey, held: TerminalKeys) {
        self.sealing_key = Some(sealing_key);
        self.terminal_keys = held;
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Rider by rider, the card and credential the account API issued
    /// replace the ones the world made up; the deny list follows the cards.
    pub fn adopt(&mut self, issued: Vec<(u64, Credential)>) {
        let mut renamed = std::collections::HashMap::new();
        for (rider, (card_id, credential)) in self.riders.iter_mut().zip(issued) {
            renamed.insert(rider.card_id, card_id);
            rider.card_id = card_id;
            rider.credential = credential;
        }
        self.denied_cards = self.denied_cards.iter().map(|card| renamed.get(card).copied().unwrap_or(*card)).collect();
        if let Some(first) = self.riders.first() {
            self.credential_valid_from = first.credential.claims.valid_from;
            self.credential_valid_until = first.credential.claims.valid_until;
        }
    }

    /// Validators that take this kind of tap.
    pub fn validators_for(&self, tap_kind: TapKind) -> Vec<usize> {
        let wanted = match tap_kind {
            TapKind::Single => GatewayKind::BusDepot,
            TapKind::Entry | TapKind::Exit => GatewayKind::MetroStation,
        };
        (0..self.validators.len()).filter(|&v| self.gateways[self.validators[v].gateway].kind == wanted).collect()
    }

    /// A credential for `rider` signed by a key nobody trusts.
    pub fn rogue_credential(&self, rider: &Rider) -> Credential {
        self.rogue_issuer.issue(
            rider.card_id,
            rider.key.public_key(),
            self.credential_valid_from,
            self.credential_valid_until,
        )
    }

    /// Yesterday's credential for `rider`: genuine, but its window is over.
    pub fn expired_credential(&self, rider: &Rider) -> Credential {
        let length = self.credential_valid_until.saturating_sub(self.credential_valid_from);
        let until = self.credential_valid_from.saturating_sub(3_600);
        self.issuer.issue(rider.card_id, rider.key.public_key(), until.saturating_sub(length), until)
    }
}

/// Cities built from different seeds get different card numbers, so two
/// demo runs in one data directory never share a rider.
fn first_card_id(seed: u64) -> u64 {
    (seed % 1_000_000 + 1) * 10_000_000
}

/// Half the gateways are bus depots, half metro stations (at least one of
/// each when there are two or more).
fn topology(spec: &WorldSpec) -> (Vec<GatewaySpec>, Vec<ValidatorSpec>) {
    let mut gateways = Vec::new();
    let mut validators = Vec::new();
    for g in 0..spec.gateways.max(1) {
        let kind = if g % 2 == 0 { GatewayKind::BusDepot } else { GatewayKind::MetroStation };
        let id = match kind {
            GatewayKind::BusDepot => format!("depot-{:02}", g / 2 + 1),
            GatewayKind::MetroStation => format!("station-{:02}", g / 2 + 1),
        };
        let mut members = Vec::new();
        for v in 0..spec.validators_per_gateway.max(1) {
            let (validator_id, route_id, station_id) = match kind {
                GatewayKind::BusDepot => {
                    let route = format!("bus-{}", 10 * (g / 2 + 1) + v % 8);
                    (format!("{id}/bus-{v:03}"), route, None)
                }
                GatewayKind::MetroStation => {
                    let line = format!("metro-{}", (g / 2) % 3 + 1);
                    (format!("{id}/gate-{v:02}"), line, Some(id.clone()))
                }
            };
            members.push(validators.len());
            validators.push(ValidatorSpec { id: validator_id, gateway: g, route_id, station_id });
        }
        gateways.push(GatewaySpec { id, kind, validators: members });
    }
    (gateways, validators)
}
