//! How the money store's columns hold farestream's values: card ids as
//! SQLite's signed 64-bit integers (the same 64 bits, so any `u64` round
//! trips), service dates as days since 1970-01-01, ids as 16 raw bytes and
//! lists of ids as their concatenation.

use chrono::NaiveDate;

use crate::store::StoreError;
use farestream_core::service_day::{date_from_days, days_since_epoch};

pub fn card_to_sql(card_id: u64) -> i64 {
    card_id as i64
}

pub fn card_from_sql(value: i64) -> u64 {
    value as u64
}

pub fn date_to_sql(date: NaiveDate) -> i64 {
    i64::from(days_since_epoch(date))
}

pub fn date_from_sql(days: i64) -> Result<NaiveDate, StoreError> {
    i32::try_from(days).ok().and_then(date_from_days).ok_or_else(|| StoreError::Corrupt(format!("service date {days}")))
}

pub fn id_from_sql(bytes: &[u8]) -> Result<[u8; 16], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("an id of {} bytes", bytes.len())))
}

pub fn ids_to_sql(ids: &[[u8; 16]]) -> Vec<u8> {
    ids.concat()
}

pub fn ids_from_sql(bytes: &[u8]) -> Result<Vec<[u8; 16]>, StoreError> {
    if !bytes.len().is_multiple_of(16) {
        return Err(StoreError::Corrupt(format!("a list of ids of {} bytes", bytes.len())));
    }
    bytes.chunks_exact(16).map(id_from_sql).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_card_id_and_day_round_trips() {
        for card in [0, 1, i64::MAX as u64, u64::MAX] {
            assert_eq!(card_from_sql(card_to_sql(card)), card);
        }
        for date in [NaiveDate::MIN, NaiveDate::from_ymd_opt(2026, 11, 26).expect("date"), NaiveDate::MAX] {
            assert_eq!(date_from_sql(date_to_sql(date)).expect("date"), date);
        }
        assert!(date_from_sql(i64::MAX).is_err());
        assert!(ids_from_sql(&[0; 17]).is_err());
        assert_eq!(ids_from_sql(&ids_to_sql(&[[1; 16], [2; 16]])).expect("ids"), vec![[1; 16], [2; 16]]);
        assert_eq!(ids_from_sql(&[]).expect("empty"), Vec::<[u8; 16]>::new());
    }
}
