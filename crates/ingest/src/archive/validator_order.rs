//! The order the archive writes a row group in: by validator id, then the
//! validator's own count, then scan id (a total order). A validator's
//! scans then sit together in the order it read them, so its id, stop,
//! times and counter change little from row to row, which is what the
//! delta encodings and ZSTD feed on.

use std::collections::HashMap;

use farestream_core::scan::ArchivedScan;

/// The sort keys of a row group's rows, taken as the rows come. Each
/// validator id is numbered when first seen; the numbers are ranked in the
/// ids' string order once, when the group is written, so the sort compares
/// integers (comparing the ids themselves, with their long shared
/// prefixes, at every step took 1.10x the time of a row group in
/// `cargo bench --bench stages -- parquet`). The numbering is kept from
/// group to group (a city's validators come back), and dropped after a
/// group that had fewer rows than it has ids, so it holds at most two
/// row groups' worth.
#[derive(Default)]
pub(super) struct ValidatorOrder {
    /// Each distinct id's first-seen number.
    numbers: HashMap<String, u32>,
    /// The ids by number.
    ids: Vec<String>,
    /// Per row: (validator number, validator's count, scan id).
    keys: Vec<(u32, u64, [u8; 16])>,
}

impl ValidatorOrder {
    pub(super) fn push(&mut self, row: &ArchivedScan) {
        let id = row.validator_id.as_str();
        // A gateway batch holds a validator's scans together: most rows
        // have the row before's validator.
        let number = match self.keys.last() {
            Some(&(last, _, _)) if self.ids.get(last as usize).is_some_and(|last| last == id) => last,
            _ => match self.numbers.get(id) {
                Some(&number) => number,
                None => self.number_new(id),
            },
        };
        self.keys.push((number, row.validator_seq, row.scan_id));
    }

    fn number_new(&mut self, id: &str) -> u32 {
        let number = u32::try_from(self.ids.len()).expect("fewer distinct validators than rows in a row group");
        self.ids.push(id.to_string());
        self.numbers.insert(id.to_string(), number);
        number
    }

    /// The positions of the rows pushed, in the order they are written;
    /// leaves this empty for the next row group.
    pub(super) fn take_positions(&mut self) -> Vec<u32> {
        // Positions are u32: a row group holds at most
        // archive.row_group_rows_max (10 million) rows.
        assert!(u32::try_from(self.keys.len()).is_ok(), "a row group of {} rows", self.keys.len());
        let mut by_id: Vec<u32> = (0..self.ids.len() as u32).collect();
        by_id.sort_unstable_by_key(|&n| &self.ids[n as usize]);
        let mut rank = vec![0u32; self.ids.len()];
        for (r, n) in by_id.into_iter().enumerate() {
            rank[n as usize] = r as u32;
        }
        let mut keys: Vec<(u32, u64, [u8; 16], u32)> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, &(number, seq, scan_id))| (rank[number as usize], seq, scan_id, i as u32))
            .collect();
        keys.sort_unstable();
        if self.ids.len() > self.keys.len() {
            self.ids.clear();
            self.numbers.clear();
        }
        self.keys.clear();
        keys.into_iter().map(|(_, _, _, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Ranking validators first sorts exactly as comparing their ids
        /// would: ids empty, long, sharing prefixes, in runs or scattered;
        /// counts at their extremes; ties broken by scan id; every row
        /// once. Over one order for several groups, as a writer uses it,
        /// through its numbering kept and dropped.
        #[test]
        fn rows_in_validator_order_are_in_the_ids_string_order(
            groups in proptest::collection::vec(proptest::collection::vec(
                (proptest::sample::select(vec!["", "a", "ab", "b", "bus-10", "bus-9", "\u{00e9}", "x-much-longer-id-with-the-same-start-1", "x-much-longer-id-with-the-same-start-2"]),
                 proptest::sample::select(vec![0u64, 1, 2, u64::MAX]),
                 0u8..4),
                0..200), 1..6),
        ) {
            let mut order = ValidatorOrder::default();
            for group in groups {
                let rows: Vec<ArchivedScan> = group
                    .iter()
                    .map(|&(id, seq, n)| ArchivedScan { validator_id: id.into(), validator_seq: seq, scan_id: [n; 16], ..ArchivedScan::blank() })
                    .collect();
                rows.iter().for_each(|row| order.push(row));
                let key = |r: &ArchivedScan| (r.validator_id.clone(), r.validator_seq, r.scan_id);
                let mut expected: Vec<_> = rows.iter().map(key).collect();
                expected.sort();
                let positions = order.take_positions();
                let mut each_once = positions.clone();
                each_once.sort_unstable();
                proptest::prop_assert_eq!(each_once, (0..rows.len() as u32).collect::<Vec<_>>());
                let got: Vec<_> = positions.into_iter().map(|i| key(&rows[i as usize])).collect();
                proptest::prop_assert_eq!(got, expected);
            }
        }
    }
}
