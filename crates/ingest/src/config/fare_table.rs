//! The fare table: `config/fares.toml` embedded as the default, or a file
//! that replaces it whole. Every amount and window is checked against its
//! range, naming the key, as the server's config is. Amounts are in cents,
//! the currency's minor unit (`farestream_core::money`); the keys' old
//! `_fen` spellings are still read, so a table written before is taken.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use farestream_core::fares::FareTable;
use farestream_core::money::Cents;

/// The shipped fare table, `config/fares.toml`.
pub const DEFAULT_FARES_TOML: &str = include_str!("../../../../config/fares.toml");

/// Most any amount may be, in cents.
const AMOUNT_CENTS_MAX: u64 = 1_000_000;
const ZONE_MAX: u32 = 100;
const EXIT_WINDOW_SECS: std::ops::RangeInclusive<u64> = 60..=86_400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaresFile {
    currency: String,
    #[serde(alias = "daily_cap_fen")]
    daily_cap_cents: u64,
    #[serde(alias = "max_fare_fen")]
    max_fare_cents: u64,
    bus: BusFares,
    metro: MetroFares,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BusFares {
    #[serde(alias = "default_fare_fen")]
    default_fare_cents: Option<u64>,
    #[serde(default)]
    routes: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetroFares {
    #[serde(alias = "base_fare_fen")]
    base_fare_cents: u64,
    #[serde(alias = "fare_per_zone_fen")]
    fare_per_zone_cents: u64,
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
        ("daily_cap_cents".to_string(), file.daily_cap_cents),
        ("max_fare_cents".to_string(), file.max_fare_cents),
        ("metro.base_fare_cents".to_string(), file.metro.base_fare_cents),
        ("metro.fare_per_zone_cents".to_string(), file.metro.fare_per_zone_cents),
    ]
    .into_iter()
    .chain(file.bus.default_fare_cents.map(|fare| ("bus.default_fare_cents".to_string(), fare)))
    .chain(file.bus.routes.iter().map(|(route, fare)| (format!("bus.routes.{route:?}"), *fare)));
    for (key, amount) in amounts {
        if amount > AMOUNT_CENTS_MAX {
            return Err(invalid(format!("{key} = {amount} is outside its range, 0 to {AMOUNT_CENTS_MAX} cents")));
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
        bus_route_fares: file.bus.routes.into_iter().map(|(route, fare)| (route, Cents::from_unsigned(fare))).collect(),
        bus_default_fare: file.bus.default_fare_cents.map(Cents::from_unsigned),
        metro_station_zones: file.metro.zones,
        metro_base_fare: Cents::from_unsigned(file.metro.base_fare_cents),
        metro_fare_per_zone: Cents::from_unsigned(file.metro.fare_per_zone_cents),
        max_fare: Cents::from_unsigned(file.max_fare_cents),
        metro_exit_window_ms: i64::try_from(window).unwrap_or(i64::MAX).saturating_mul(1000),
        daily_cap: Cents::from_unsigned(file.daily_cap_cents),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses() {
        let table = load_fares(None).expect("config/fares.toml");
        assert_eq!((table.currency.as_str(), table.daily_cap.get(), table.max_fare.get()), ("CNY", 1_500, 900));
        assert_eq!(table.metro_station_zones.get("station-05"), Some(&3));
        assert_eq!(table.metro_exit_window_ms, 10_800_000);
    }

    #[test]
    fn bad_tables_are_refused_naming_the_key() {
        let shipped = DEFAULT_FARES_TOML;
        let cases = [
            (shipped.replace("daily_cap_cents = 1500", "daily_cap_cents = 1000001"), "daily_cap_cents = 1000001"),
            (shipped.replace("daily_cap_cents = 1500", "daily_cap_cents = -1"), "daily_cap_cents"),
            (shipped.replace("\"bus-99\" = 300", "\"bus-99\" = 2000000"), "bus.routes.\"bus-99\""),
            (shipped.replace("\"station-08\" = 4", "\"station-08\" = 101"), "\"station-08\" = 101"),
            (shipped.replace("exit_window_secs = 10800", "exit_window_secs = 59"), "exit_window_secs = 59"),
            (shipped.replace("exit_window_secs = 10800", "exit_window_secs = 86401"), "exit_window_secs"),
            (shipped.replace("currency = \"CNY\"", "currency = \"yuan\""), "ISO 4217"),
            (shipped.replace("max_fare_cents = 900", "max_fare = 900"), "max_fare"),
            (String::new(), "currency"),
        ];
        for (text, named) in cases {
            let error = parse_fares(&text, "fares.toml").expect_err(named).to_string();
            assert!(error.contains(named), "{named}: {error}");
        }
    }

    #[test]
    fn a_table_written_with_the_older_fen_keys_is_read_the_same() {
        assert!(DEFAULT_FARES_TOML.contains("older `_fen`"), "the shipped table names the older spelling");
        let older = DEFAULT_FARES_TOML.replace("_cents =", "_fen =");
        assert!(older.contains("daily_cap_fen = 1500") && !older.contains("_cents ="), "every key renamed");
        assert_eq!(parse_fares(&older, "old.toml").expect("the older spelling"), load_fares(None).expect("shipped"));
        let both = DEFAULT_FARES_TOML.replace("max_fare_cents = 900", "max_fare_cents = 900\nmax_fare_fen = 900");
        let error = parse_fares(&both, "both.toml").expect_err("one key, two spellings").to_string();
        assert!(error.contains("max_fare"), "{error}");
    }
}
