//! The simulated payment gateway's books: an append-only ledger file, one
//! JSON line per applied request, fsynced before the answer; balances,
//! agreements and idempotency keys are derived from it on start, never
//! stored apart. A torn last line (a crash mid-write) was never answered,
//! so it is dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One applied request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// `agreement`, `agreement_end`, `topup`, `debit` or `credit`.
    pub kind: String,
    pub key: String,
    pub payment_user_id: String,
    pub agreement_id: String,
    pub amount_cents: u64,
    pub currency: String,
    /// `succeeded` or `declined`.
    pub outcome: String,
    pub transaction_id: String,
    /// SHA-256 of the request body: the same key with another body is an error.
    pub request_hash: String,
}

impl Entry {
    /// A debit or credit as the money audit compares it with the charges;
    /// `None` for agreements and top-ups.
    pub fn applied_payment(&self) -> Option<farestream_money::money_audit::AppliedPayment> {
        (self.kind == "debit" || self.kind == "credit").then(|| farestream_money::money_audit::AppliedPayment {
            kind: self.kind.clone(),
            key: self.key.clone(),
            amount_cents: self.amount_cents,
            succeeded: self.outcome == "succeeded",
        })
    }

    /// What this entry did to its payer's balance: a succeeded top-up or
    /// credit adds its amount, a succeeded debit takes it away, anything
    /// else leaves the balance as it was.
    pub fn balance_change(&self) -> i64 {
        let amount = i64::try_from(self.amount_cents).unwrap_or(i64::MAX);
        match (self.outcome.as_str(), self.kind.as_str()) {
            ("succeeded", "topup" | "credit") => amount,
            ("succeeded", "debit") => -amount,
            _ => 0,
        }
    }
}

pub struct Ledger {
    path: PathBuf,
    file: File,
    entries: Vec<Entry>,
    by_key: HashMap<(String, String), usize>,
    balances: HashMap<String, i64>,
    agreements: HashMap<String, String>,
}

impl Ledger {
    pub fn open(dir: &Path) -> std::io::Result<Ledger> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("ledger.jsonl");
        let mut ledger = Ledger {
            file: OpenOptions::new().create(true).append(true).read(true).open(&path)?,
            path,
            entries: Vec::new(),
            by_key: HashMap::new(),
            balances: HashMap::new(),
            agreements: HashMap::new(),
        };
        let (entries, good_bytes) = parse(&ledger.path)?;
        entries.into_iter().for_each(|entry| ledger.apply(entry));
        ledger.file.set_len(good_bytes)?;
        Ok(ledger)
    }

    /// The entries of the ledger in `dir`, read without opening it for
    /// writing (an auditor's view; a torn last line is left out).
    pub fn read_entries(dir: &Path) -> std::io::Result<Vec<Entry>> {
        Ok(parse(&dir.join("ledger.jsonl"))?.0)
    }

    /// The entry an earlier request of `kind` under `key` made, if any.
    pub fn by_key(&self, kind: &str, key: &str) -> Option<&Entry> {
        self.by_key.get(&(kind.to_string(), key.to_string())).map(|&i| &self.entries[i])
    }

    pub fn balance(&self, payment_user_id: &str) -> i64 {
        self.balances.get(payment_user_id).copied().unwrap_or(0)
    }

    pub fn payer_of(&self, agreement_id: &str) -> Option<&str> {
        self.agreements.get(agreement_id).map(String::as_str)
    }

    /// Whether the agreement was ended: nothing more is applied under it.
    pub fn is_ended(&self, agreement_id: &str) -> bool {
        self.by_key.contains_key(&("agreement_end".to_string(), agreement_id.to_string()))
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn next_seq(&self) -> u64 {
        self.entries.len() as u64 + 1
    }

    /// Writes and fsyncs `entry`, then applies it.
    pub fn append(&mut self, entry: Entry) -> std::io::Result<Entry> {
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.apply(entry.clone());
        Ok(entry)
    }

    fn apply(&mut self, entry: Entry) {
        let change = entry.balance_change();
        if change != 0 {
            let balance = self.balances.entry(entry.payment_user_id.clone()).or_default();
            *balance = balance.saturating_add(change);
        }
        if entry.kind == "agreement" {
            self.agreements.insert(entry.agreement_id.clone(), entry.payment_user_id.clone());
        }
        self.by_key.insert((entry.kind.clone(), entry.key.clone()), self.entries.len());
        self.entries.push(entry);
    }
}

/// The entries up to the first line that does not parse, and the bytes they take.
fn parse(path: &Path) -> std::io::Result<(Vec<Entry>, u64)> {
    let mut entries = Vec::new();
    let mut good_bytes = 0u64;
    for line in BufReader::new(File::open(path)?).split(b'\n') {
        let line = line?;
        let Ok(entry) = serde_json::from_slice::<Entry>(&line) else { break };
        good_bytes += line.len() as u64 + 1;
        entries.push(entry);
    }
    Ok((entries, good_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, kind: &str, amount: u64, outcome: &str) -> Entry {
        Entry {
            seq,
            kind: kind.into(),
            key: format!("k{seq}"),
            payment_user_id: "payer".into(),
            agreement_id: "agr".into(),
            amount_cents: amount,
            currency: "CNY".into(),
            outcome: outcome.into(),
            transaction_id: format!("t{seq}"),
            request_hash: String::new(),
        }
    }

    #[test]
    fn balances_are_rebuilt_from_the_ledger_and_a_torn_line_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = Ledger::open(dir.path()).expect("open");
        ledger.append(entry(1, "topup", 1_000, "succeeded")).expect("topup");
        ledger.append(entry(2, "debit", 300, "succeeded")).expect("debit");
        ledger.append(entry(3, "debit", 5_000, "declined")).expect("declined");
        ledger.append(entry(4, "credit", 100, "succeeded")).expect("credit");
        drop(ledger);
        let path = dir.path().join("ledger.jsonl");
        let mut file = OpenOptions::new().append(true).open(&path).expect("file");
        file.write_all(b"{\"seq\":5,\"kind\":\"deb").expect("torn");
        drop(file);
        assert_eq!(Ledger::read_entries(dir.path()).expect("read").len(), 4, "the torn line left out");
        let mut ledger = Ledger::open(dir.path()).expect("reopen");
        assert_eq!((ledger.balance("payer"), ledger.entries().len()), (800, 4));
        assert_eq!(ledger.by_key("debit", "k3").map(|e| e.outcome.as_str()), Some("declined"));
        ledger.append(entry(5, "debit", 800, "succeeded")).expect("after the torn line");
        drop(ledger);
        assert_eq!(Ledger::open(dir.path()).expect("again").balance("payer"), 0);
    }
}
