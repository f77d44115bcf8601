//! The fare table: `config/fares.toml` embedded as the default, or a file
//! that replaces it whole. Every amount and window is checked against its
//! range, naming the key, as the server's config is.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use farestream_core::fares::{Cents, FareTable};

/// The shipped fare table, `config/fares.toml`.
pub const DEFAULT_FARES_TOML: &str = include_str!("../../../../config/fares.toml");

/// Most any amount may be, in the currency's smallest unit.
const AMOUNT_MAX: Cents = 1_000_000;
const ZONE_MAX: u32 = 100;
const EXIT_WINDOW_SECS: std::ops::RangeInclusive<u64> = 60..=86_400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaresFile {
    currency: String,
    daily_cap_fen: Cents,
    max_fare_fen: Cents,
    bus: BusFares,
    metro: MetroFares,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BusFares {
    default_fare_fen: Option<Cents>,
    #[serde(default)]
    routes: BTreeMap<String, Cents>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetroFares {
    base_fare_fen: Cents,
    fare_per_zone_fen: Cents,
    exit_window_secs: u64,
    #[serde(default)]
    zones: BTreeMap<String, u32>,
}

/// The fare table in `path`, or the shipped one.
pub fn load_fares(path: Option<&Path>) -> Result<FareTable, ConfigError> {
    let Some(path) = path else {
        return parse_fares(DEFAULT_FARES_TOML, "<default fares>");
    };
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse_fares(&text, &path.display().to_string())
}

/// Parses and checks a fare table.
pub fn parse_fares(text: &str, origin: &str) -> Result<FareTable, ConfigError> {
    let file: FaresFile = toml::from_str(text)
        .map_err(|e| ConfigError::Key { path: origin.to_string(), reason: super::one_line(&e.to_string()) })?;
    let invalid = |what: String| ConfigError::Invalid(format!("{origin}: {what}"));
    let currency_is_iso = file.currency.len() == 3 && file.currency.bytes().all(|b| b.is_ascii_uppercase());
    if !currency_is_iso {
        return Err(invalid(format!("currency {:?} is not an ISO 4217 code such as \"CNY\"", file.currency)));
    }
    let amounts = [
        ("daily_cap_fen".to_string(), file.daily_cap_fen),
        ("max_fare_fen".to_string(), file.max_fare_fen),
        ("metro.base_fare_fen".to_string(), file.metro.base_fare_fen),
        ("metro.fare_per_zone_fen".to_string(), file.metro.fare_per_zone_fen),
    ]
    .into_iter()
    .chain(file.bus.default_fare_fen.map(|fare| ("bus.default_fare_fen".to_string(), fare)))
    .chain(file.bus.routes.iter().map(|(route, fare)| (format!("bus.routes.{route:?}"), *fare)));
    for (key, amount) in amounts {
        if amount > AMOUNT_MAX {
            return Err(invalid(format!("{key} = {amount} is outside its range, 0 to {AMOUNT_MAX} fen")));
        }
    }
    if let Some((station, zone)) = file.metro.zones.iter().find(|(_, zone)| **zone > ZONE_MAX) {
        return Err(invalid(format!("metro.zones.{station:?} = {zone} is outside its range, 0 to {ZONE_MAX}")));
    }
    let window = file.metro.exit_window_secs;
    if !EXIT_WINDOW_SECS.contains(&window) {
        let (min, max) = (EXIT_WINDOW_SECS.start(), EXIT_WINDOW_SECS.end());
        return Err(invalid(format!("metro.exit_window_secs = {window} is outside its range, {min} to {max} s")));
    }
    Ok(FareTable {
        currency: file.currency,
        bus_route_fares: file.bus.routes,
        bus_default_fare: file.bus.default_fare_fen,
        metro_station_zones: file.metro.zones,
        metro_base_fare: file.metro.base_fare_fen,
        metro_fare_per_zone: file.metro.fare_per_zone_fen,
        max_fare: file.max_fare_fen,
        metro_exit_window_ms: i64::try_from(window).unwrap_or(i64::MAX).saturating_mul(1000),
        daily_cap: file.daily_cap_fen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses() {
        let table = load_fares(None).expect("config/fares.toml");
        assert_eq!((table.currency.as_str(), table.daily_cap, table.max_fare), ("CNY", 1_500, 900));
        assert_eq!(table.metro_station_zones.get("station-05"), Some(&3));
        assert_eq!(table.metro_exit_window_ms, 10_800_000);
    }

    #[test]
    fn bad_tables_are_refused_naming_the_key() {
        let shipped = DEFAULT_FARES_TOML;
        let cases = [
            (shipped.replace("daily_cap_fen = 1500", "daily_cap_fen = 1000001"), "daily_cap_fen = 1000001"),
            (shipped.replace("daily_cap_fen = 1500", "daily_cap_fen = -1"), "daily_cap_fen"),
            (shipped.replace("\"bus-99\" = 300", "\"bus-99\" = 2000000"), "bus.routes.\"bus-99\""),
            (shipped.replace("\"station-08\" = 4", "\"station-08\" = 101"), "\"station-08\" = 101"),
            (shipped.replace("exit_window_secs = 10800", "exit_window_secs = 59"), "exit_window_secs = 59"),
            (shipped.replace("exit_window_secs = 10800", "exit_window_secs = 86401"), "exit_window_secs"),
            (shipped.replace("currency = \"CNY\"", "currency = \"yuan\""), "ISO 4217"),
            (shipped.replace("max_fare_fen = 900", "max_fare = 900"), "max_fare"),
            (String::new(), "currency"),
        ];
        for (text, named) in cases {
            let error = parse_fares(&text, "fares.toml").expect_err(named).to_string();
            assert!(error.contains(named), "{named}: {error}");
        }
    }
}
