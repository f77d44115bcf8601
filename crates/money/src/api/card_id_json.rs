//! A card id in JSON: a string of decimal digits, never a number. JSON
//! numbers are doubles to most clients (JavaScript, jq), exact only up to
//! 2^53, and card ids go up to 2^63 - 1: as a number, a browser would show
//! a rider someone else's card.

use serde::{Deserialize, Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(card_id: &u64, out: S) -> Result<S::Ok, S::Error> {
    out.collect_str(card_id)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<u64, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(input)?;
    text.parse().map_err(|_| serde::de::Error::custom(format!("card_id {text:?} is not a decimal card id")))
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Card {
        #[serde(with = "super")]
        card_id: u64,
    }

    #[test]
    fn a_card_id_is_a_string_of_digits_both_ways() {
        for card_id in [0, 1, 9_007_199_254_740_993, i64::MAX as u64] {
            let json = serde_json::to_string(&Card { card_id }).expect("json");
            assert_eq!(json, format!("{{\"card_id\":\"{card_id}\"}}"));
            assert_eq!(serde_json::from_str::<Card>(&json).expect("back"), Card { card_id });
        }
        for bad in
            ["{\"card_id\":7}", "{\"card_id\":\"\"}", "{\"card_id\":\"-1\"}", "{\"card_id\":\"18446744073709551616\"}"]
        {
            assert!(serde_json::from_str::<Card>(bad).is_err(), "{bad}");
        }
    }
}
