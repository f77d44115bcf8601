//! The account API over HTTP on loopback, as a rider's app uses it: codes,
//! tokens, activation, the day's keys (refused while the rider owes), an
//! online code, arrears, refunds, and the issuer keys for validators.

use farestream::api::{ApiSettings, ApiState, ErrorBody, HttpHandle};
use farestream::clock_source::Clock;
use farestream::config::Config;
use farestream::issuer_keys::{IssuerKeysNow, LiveIssuerKeys};
use farestream::keystore::ExportedKey;
use farestream::ridecode::sealed::open;
use farestream::ridecode::{
    Credential, HeldTerminalKey, IssuerPublicKeys, IssuerSigningKey, PublishedKey, TerminalKeys, UserKey,
};
use farestream::scan::TapKind;
use farestream::server::ServerError;
use farestream::wal::committer::WalState;
use farestream_core::account::AccountState;
use serde_json::{Value, json};

use crate::money::{MINUTE, Money, tap};
use crate::support::{ISSUER_KEY_ID, T0_MS, TestRider, batch, secs};

pub(crate) struct App {
    m: Money,
    api: HttpHandle,
    http: reqwest::Client,
}

impl App {
    pub(crate) async fn start() -> App {
        App::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut ApiSettings)) -> App {
        let m = Money::start().await;
        let mut settings = ApiSettings::from_config(&Config::defaults()).expect("settings").expect("api on");
        settings.listen_addr = "127.0.0.1:0".parse().expect("addr");
        tune(&mut settings);
        let issuer = IssuerSigningKey::from_seed(ISSUER_KEY_ID, &[11; 32]).expect("issuer");
        let key = PublishedKey {
            key_id: ISSUER_KEY_ID,
            public_key: issuer.public_key(),
            signs_from_secs: 0,
            trusted_until_secs: None,
        };
        let published = vec![ExportedKey { key, active: true, pem: "-----BEGIN PUBLIC KEY-----".into() }];
        let mut trusted = IssuerPublicKeys::new();
        trusted.insert(ISSUER_KEY_ID, issuer.public_key());
        let terminal = vec![terminal_key()];
        m.h.server.pipeline().set_terminal_keys(terminal_keys());
        let keys = IssuerKeysNow {
            trusted,
            published,
            signer: Some(std::sync::Arc::new(issuer)),
            terminal,
            terminal_ran_out: Vec::new(),
        };
        let state = ApiState { settings, accounts: m.h.server.accounts().clone(), issuer: LiveIssuerKeys::new(keys) };
        let api = farestream::api::start(state).await.expect("api");
        App { m, api, http: reqwest::Client::new() }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.api.url());
        let mut request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Registers `phone` with the code the notifier "sent"; returns card and token.
    pub(crate) async fn register(&self, phone: &str) -> (u64, String) {
        assert_eq!(self.call("POST", "/v1/otp", None, Some(json!({"phone": phone}))).await.0, 202);
        let message = self.m.h.inbox.last_to(phone).expect("a code was sent");
        let code = message.rsplit(' ').next().expect("code").to_string();
        let (status, body) = self.call("POST", "/v1/register", None, Some(json!({"phone": phone, "code": code}))).await;
        assert_eq!(status, 201, "{body}");
        let card: u64 = body["card_id"].as_str().expect("card id, a string").parse().expect("decimal");
        assert!(card <= farestream::scan::ID_MAX, "issue 17 item 14: within a signed 64-bit integer");
        (card, body["token"].as_str().expect("token").to_string())
    }

    async fn activate(&self, card: u64, token: &str, balance: u64) {
        let payer = format!("payer-{card}");
        let amount = 2_000 + balance;
        self.m.control.top_up(&payer, amount, &format!("topup-{card}-{amount}")).await.expect("top up");
        let (status, body) = self
            .call("POST", &format!("/v1/cards/{card}/activate"), Some(token), Some(json!({"payment_user_id": payer})))
            .await;
        assert_eq!((status, body["state"].as_str()), (200, Some("active")), "{body}");
    }

    /// Asks for `card`'s refund; the card is refund-pending at once.
    async fn request_refund(&self, card: u64, token: &str) {
        let (status, body) = self.call("POST", &format!("/v1/cards/{card}/refund"), Some(token), None).await;
        assert_eq!((status, body["state"].as_str()), (200, Some("refund_pending")), "{body}");
    }

    /// The day's keys, as a rider the test can make codes for.
    async fn keys(&self, card: u64, token: &str) -> TestRider {
        let (status, body) = self.call("POST", &format!("/v1/cards/{card}/keys"), Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        let seed: [u8; 32] =
            hex::decode(body["user_seed_hex"].as_str().expect("seed")).expect("hex").try_into().expect("32");
        let credential =
            Credential::decode(&hex::decode(body["credential_hex"].as_str().expect("credential")).expect("hex"))
                .expect("credential");
        TestRider { key: UserKey::from_seed(&seed).expect("key"), credential }
    }
}

/// The terminal key the API hands out, and the test server opens codes with.
fn terminal_key() -> HeldTerminalKey {
    HeldTerminalKey {
        key_id: 9,
        secret: [21; 32].into(),
        service_date: chrono::NaiveDate::from_ymd_opt(2025, 11, 20).expect("date"),
        handed_out_from_secs: 0,
        trusted_until_secs: None,
    }
}

fn terminal_keys() -> TerminalKeys {
    let mut keys = TerminalKeys::new();
    keys.insert(terminal_key().key());
    keys
}

fn error_of(body: &Value) -> String {
    serde_json::from_value::<ErrorBody>(body.clone()).map(|e| e.error).unwrap_or_else(|_| format!("not JSON: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_needs_the_right_code_and_a_token_speaks_only_for_its_card() {
    let app = App::start().await;
    for phone in ["", "13800000000", "+1234567", "+1234567890123456", "+86 13800000000", "+86١٣٨٠٠٠٠٠٠٠٠"] {
        let (status, body) = app.call("POST", "/v1/otp", None, Some(json!({"phone": phone}))).await;
        assert_eq!((status, error_of(&body)), (400, "bad_request".into()), "{phone:?}");
    }
    assert_eq!(app.call("POST", "/v1/otp", None, Some(json!({"phone": "+12345678"}))).await.0, 202, "8 digits");
    assert_eq!(app.call("POST", "/v1/otp", None, Some(json!({"phone": "+123456789012345"}))).await.0, 202, "15 digits");
    let (status, body) = app.call("POST", "/v1/otp", None, Some(json!({"phone": "+12345678"}))).await;
    assert_eq!((status, error_of(&body)), (429, "too_many_requests".into()), "a second code too soon");
    let wrong = json!({"phone": "+123456789012345", "code": "000000"});
    let sent = app.m.h.inbox.last_to("+123456789012345").expect("sent");
    if !sent.ends_with("000000") {
        assert_eq!(app.call("POST", "/v1/register", None, Some(wrong)).await.0, 401);
    }
    let phone = "+123456789012345";
    let bad_codes = [json!({"phone": phone, "code": "12345"}), json!({"phone": phone, "code": "1234567"})];
    let more_bad =
        [json!({"phone": phone, "code": "12345a"}), json!({"phone": phone, "code": ""}), json!({"phone": phone})];
    for body in bad_codes.into_iter().chain(more_bad).chain([json!([])]) {
        assert_eq!(app.call("POST", "/v1/register", None, Some(body)).await.0, 400);
    }
    app.m.h.clock.set(app.m.h.clock.now_ms() + 31_000);
    let (alice, alice_token) = app.register("+8613800000001").await;
    let (bob, bob_token) = app.register("+8613800000002").await;
    assert_ne!(alice, bob);
    let (status, body) = app.call("GET", &format!("/v1/cards/{alice}"), Some(&alice_token), None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("registered")));
    assert_eq!(app.call("GET", &format!("/v1/cards/{alice}"), Some(&bob_token), None).await.0, 404, "not 403");
    assert_eq!(app.call("GET", "/v1/cards/not-a-card", Some(&bob_token), None).await.0, 404);
    assert_eq!(app.call("GET", &format!("/v1/cards/{alice}"), None, None).await.0, 401);
    assert_eq!(app.call("GET", &format!("/v1/cards/{alice}"), Some("forged"), None).await.0, 401);
    // The same phone again: a new token for the same card.
    app.m.h.clock.set(app.m.h.clock.now_ms() + 31_000);
    assert_eq!(app.register("+8613800000001").await.0, alice);
    let huge = "x".repeat(20_000);
    assert_eq!(
        app.call("POST", "/v1/otp", None, Some(json!({"phone": huge}))).await.0,
        413,
        "over api.request_bytes_max"
    );
    app.api.stop().await;
}

/// Issue 19: a new login left every older token valid, with no way to end
/// one. A rider lists its sessions and ends the others (a lost phone) or
/// its own (signing out); another rider's token ends none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_lists_its_sessions_and_ends_the_old_ones_and_its_own() {
    let app = App::start().await;
    let (card, lost_phone) = app.register("+8613800000011").await;
    app.m.h.clock.set(app.m.h.clock.now_ms() + 31_000);
    let (again, new_phone) = app.register("+8613800000011").await;
    assert_eq!(again, card);
    app.m.h.clock.set(app.m.h.clock.now_ms() + 31_000);
    let (_, spare) = app.register("+8613800000011").await;
    let (other_card, other_token) = app.register("+8613800000012").await;
    let sessions_path = format!("/v1/cards/{card}/sessions");

    let (status, body) = app.call("GET", &sessions_path, Some(&new_phone), None).await;
    assert_eq!(status, 200, "{body}");
    let sessions = body["sessions"].as_array().expect("sessions").clone();
    assert_eq!(sessions.len(), 3, "{body}");
    assert_eq!(sessions.iter().filter(|s| s["current"] == json!(true)).count(), 1);
    assert!(!body.to_string().contains(&lost_phone), "a list never shows a token");
    let lost_id = sessions.last().expect("oldest")["session_id"].as_str().expect("id").to_string();

    // Another rider's token, and ids that are not this card's: 404.
    let one = format!("{sessions_path}/{lost_id}");
    assert_eq!(app.call("DELETE", &one, Some(&other_token), None).await.0, 404);
    assert_eq!(app.call("GET", &format!("/v1/cards/{other_card}/sessions"), Some(&new_phone), None).await.0, 404);
    let long = "f".repeat(2_000);
    for id in ["0000000000000000", long.as_str()] {
        assert_eq!(app.call("DELETE", &format!("{sessions_path}/{id}"), Some(&new_phone), None).await.0, 404, "{id}");
    }
    assert_eq!(app.call("GET", &format!("/v1/cards/{card}"), Some(&lost_phone), None).await.0, 200, "still valid");

    // The lost phone's session ends; its token is refused from then on.
    assert_eq!(app.call("DELETE", &one, Some(&new_phone), None).await.0, 204);
    assert_eq!(app.call("GET", &format!("/v1/cards/{card}"), Some(&lost_phone), None).await.0, 401);
    assert_eq!(app.call("DELETE", &one, Some(&new_phone), None).await.0, 404, "ended once");
    // Every other session at once.
    let (status, body) = app.call("DELETE", &sessions_path, Some(&new_phone), None).await;
    assert_eq!((status, body["ended"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(app.call("GET", &format!("/v1/cards/{card}"), Some(&spare), None).await.0, 401);
    // Signing out: the token in hand ends.
    let current = format!("{sessions_path}/current");
    assert_eq!(app.call("DELETE", &current, Some(&new_phone), None).await.0, 204);
    assert_eq!(app.call("GET", &format!("/v1/cards/{card}"), Some(&new_phone), None).await.0, 401);
    assert_eq!(app.call("GET", &format!("/v1/cards/{other_card}"), Some(&other_token), None).await.0, 200);
    app.api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_issued_only_while_the_rider_owes_nothing() {
    let app = App::start().await;
    let (card, token) = app.register("+8613800000010").await;
    let (status, body) = app.call("POST", &format!("/v1/cards/{card}/keys"), Some(&token), None).await;
    assert_eq!((status, error_of(&body)), (409, "keys_refused".into()), "not activated yet");
    app.activate(card, &token, 100).await;
    let rider = app.keys(card, &token).await;
    let claims = rider.credential.claims;
    assert_eq!(claims.card_id, card);
    let validity = app.m.h.config.ride_code.credential_validity_secs;
    assert_eq!(claims.valid_until - claims.valid_from, validity, "never longer than credential_validity_secs");
    assert_eq!(claims.valid_from, secs(app.m.h.clock.now_ms()));

    // Rides on the keys: a metro trip the bank cannot cover.
    let issued = app.m.h.clock.now_ms();
    app.m.h.clock.set(issued + 60 * MINUTE);
    let trip = vec![
        tap(&rider, 1, issued + 10 * MINUTE, TapKind::Entry, "station-01"),
        tap(&rider, 2, issued + 30 * MINUTE, TapKind::Exit, "station-05"),
    ];
    assert_eq!(app.m.h.client().push(&batch("depot-1", 1, trip)).await.expect("ack").accepted, 2);
    app.m.settle().await;
    let (status, body) = app.call("POST", &format!("/v1/cards/{card}/keys"), Some(&token), None).await;
    assert_eq!((status, error_of(&body)), (409, "keys_refused".into()), "in arrears: {body}");
    assert!(body["message"].as_str().unwrap_or("").contains("500"), "says what is owed: {body}");
    let (status, _) = app.call("POST", &format!("/v1/cards/{card}/code"), Some(&token), None).await;
    assert_eq!(status, 409, "no online code either");
    let (status, body) = app.call("GET", &format!("/v1/cards/{card}"), Some(&token), None).await;
    assert_eq!((status, body["arrears_cents"].as_i64()), (200, Some(500)));
    assert_eq!(body["charges"][0]["outcome"], "declined");

    let (status, body) = app.call("POST", &format!("/v1/cards/{card}/arrears/pay"), Some(&token), None).await;
    assert_eq!((status, error_of(&body)), (402, "payment_declined".into()), "the bank still holds only 100");
    app.m.control.top_up(&format!("payer-{card}"), 1_000, &format!("topup-{card}-1")).await.expect("top up");
    let (status, body) = app.call("POST", &format!("/v1/cards/{card}/arrears/pay"), Some(&token), None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("active")), "{body}");
    let again = app.keys(card, &token).await;
    let issued = app.m.h.clock.now_ms();
    app.m.h.clock.set(issued + 10 * MINUTE);
    let ride = vec![tap(&again, 3, issued + 5 * MINUTE, TapKind::Single, "bus-99")];
    assert_eq!(app.m.h.client().push(&batch("depot-1", 2, ride)).await.expect("ack").accepted, 1, "rides again");
    app.api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_made_key_is_certified_and_an_online_code_rides() {
    let app = App::start().await;
    let (card, token) = app.register("+8613800000020").await;
    app.activate(card, &token, 5_000).await;
    let own = UserKey::from_seed(&[42; 32]).expect("key");
    let body = json!({"public_key_hex": hex::encode(own.public_key())});
    let (status, keys) = app.call("POST", &format!("/v1/cards/{card}/keys"), Some(&token), Some(body)).await;
    assert_eq!(status, 200, "{keys}");
    assert!(keys["user_seed_hex"].is_null(), "the private key never left the phone");
    assert_eq!(keys["terminal_key"]["key_id"], 9, "{keys}");
    assert_eq!(keys["terminal_key"]["secret_hex"], hex::encode([21; 32]));
    assert_eq!((keys["code_counter_from"].as_u64(), keys["code_counter_until"].as_u64()), (Some(0), Some(1 << 16)));
    let credential = Credential::decode(&hex::decode(keys["credential_hex"].as_str().expect("hex")).expect("hex"))
        .expect("credential");
    assert_eq!(credential.claims.user_public_key, own.public_key());
    let identity_point = hex::encode({
        let mut y = [0u8; 32];
        y[0] = 1;
        y
    });
    for bad in [
        String::new(),
        "00".repeat(31),
        "00".repeat(33),
        "zz".repeat(32),
        "00".repeat(32),
        "ff".repeat(32),
        identity_point,
        format!("0x{}", hex::encode(own.public_key())),
    ] {
        let (status, _) = app
            .call("POST", &format!("/v1/cards/{card}/keys"), Some(&token), Some(json!({"public_key_hex": bad})))
            .await;
        assert_eq!(status, 400, "{bad:?}: not a key the server would trust");
    }
    let (status, online) = app.call("POST", &format!("/v1/cards/{card}/code"), Some(&token), None).await;
    assert_eq!(status, 200, "{online}");
    let sealed = hex::decode(online["ride_code_hex"].as_str().expect("hex")).expect("hex");
    assert_eq!((sealed.len(), sealed[0]), (207, 2), "an online code is sealed too");
    let code = open(&sealed, &terminal_keys()).expect("opens under the day's terminal key");
    assert_eq!(code.credential.claims.card_id, card);
    assert_eq!(code.counter, 1 << 16, "the online code took the card's second block");
    let mut scan = tap(&TestRider { key: own, credential }, 1, T0_MS, TapKind::Single, "bus-99");
    scan.ride_code = sealed;
    scan.validator_time_ms = app.m.h.clock.now_ms();
    assert_eq!(app.m.h.client().push(&batch("depot-1", 1, vec![scan])).await.expect("ack").accepted, 1);
    let charges = app.m.settle().await;
    assert_eq!(charges.iter().map(|c| (c.card_id, c.amount_cents.get())).collect::<Vec<_>>(), [(card, 300)]);
    let (status, keys) = app.call("GET", "/v1/issuer-keys", None, None).await;
    assert_eq!(status, 200);
    let issuer = IssuerSigningKey::from_seed(ISSUER_KEY_ID, &[11; 32]).expect("issuer");
    assert_eq!(keys[0]["public_key_hex"], hex::encode(issuer.public_key()));
    app.api.stop().await;
}

/// Issue 17 items 4 and 7: a refund request denies the card at once; the
/// deposit goes back only once no ride of the card can still arrive (its
/// newest credential's end plus the accepted lateness and skew), with
/// what it owes set against the deposit; then the card closes, comes off
/// the deny list, and its rider can sign up again with the same card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_waits_for_the_last_ride_nets_arrears_and_the_rider_may_return() {
    let app = App::start().await;
    let (paid_up, paid_token) = app.register("+8613800000030").await;
    app.activate(paid_up, &paid_token, 5_000).await;
    let (owing, owing_token) = app.register("+8613800000031").await;
    app.activate(owing, &owing_token, 0).await;
    let rider = app.keys(owing, &owing_token).await;
    let issued = app.m.h.clock.now_ms();
    app.m.h.clock.set(issued + 10 * MINUTE);
    let ride = vec![tap(&rider, 1, issued + 5 * MINUTE, TapKind::Single, "bus-99")];
    app.m.h.client().push(&batch("depot-1", 1, ride)).await.expect("ack");
    app.m.settle().await;
    let asked = app.m.h.clock.now_ms();
    for (card, token) in [(paid_up, &paid_token), (owing, &owing_token)] {
        app.request_refund(card, token).await;
    }
    assert!(app.m.h.server.deny_list().contains(paid_up), "denied at once, not at the close");
    let (status, body) = app.call("POST", &format!("/v1/cards/{paid_up}/keys"), Some(&paid_token), None).await;
    assert_eq!((status, error_of(&body)), (409, "keys_refused".into()));
    let accounts = app.m.h.server.accounts();
    let lateness = 3 * 86_400_000 + 30_000;
    let early = accounts.process_refunds_as_of(asked + lateness - 1).await.expect("refunds");
    assert_eq!(early, Default::default(), "not before the accepted lateness has passed");
    let first = accounts.process_refunds_as_of(asked + lateness).await.expect("refunds");
    assert_eq!(first.closed, vec![paid_up], "the owing card still holds a credential: {first:?}");
    let owing_due = i64::from(rider.credential.claims.valid_until) * 1_000 + lateness;
    assert!(accounts.process_refunds_as_of(owing_due - 1).await.expect("refunds").closed.is_empty());
    let second = accounts.process_refunds_as_of(owing_due).await.expect("refunds");
    assert_eq!((second.closed, second.owing), (vec![owing], vec![]), "the 300 owed came out of the deposit");
    let credits: Vec<_> =
        app.m.control.ledger().await.expect("ledger").into_iter().filter(|e| e.kind == "credit").collect();
    assert_eq!(
        credits.iter().map(|e| (e.key.clone(), e.amount_cents)).collect::<Vec<_>>(),
        [(format!("refund-{paid_up}-1"), 2_000), (format!("refund-{owing}-1"), 1_700)]
    );
    let closed = accounts.account(owing).await.expect("account");
    assert_eq!((closed.state, closed.arrears_cents.get(), closed.deposit_cents.get()), (AccountState::Closed, 0, 0));
    assert!(!app.m.h.server.deny_list().contains(owing), "a closed card has no valid credential: off the list");
    assert!(accounts.process_refunds_as_of(owing_due + 1).await.expect("again").closed.is_empty(), "closed once");
    // Arrears set against the deposit are a payment of them: the day
    // reconciles (the store's arrears agree with declines less payments).
    app.m.h.server.flush_archive().await.expect("flush");
    let settings = farestream::settle::settle_settings(&app.m.h.config, app.m.h.dir.path()).expect("settings");
    let day = "2025-11-20".parse().expect("date");
    let settled =
        farestream_analytics::settle::settle_day(&settings, day, app.m.h.clock.now_ms()).await.expect("settle");
    assert!(settled.breaks.is_empty(), "{:?}", settled.breaks);

    // Item 7: the closed rider signs up again and rides on the same card.
    app.m.h.clock.set(app.m.h.clock.now_ms() + 31_000);
    let (again, token) = app.register("+8613800000030").await;
    assert_eq!(again, paid_up, "the same card, reopened");
    let (status, body) = app.call("GET", &format!("/v1/cards/{again}"), Some(&token), None).await;
    assert_eq!((status, body["state"].as_str(), body["deposit_cents"].as_i64()), (200, Some("registered"), Some(0)));
    let ended: Vec<String> = app
        .m
        .control
        .ledger()
        .await
        .expect("ledger")
        .into_iter()
        .filter(|e| e.kind == "agreement_end")
        .map(|e| e.agreement_id)
        .collect();
    assert_eq!(ended, [format!("agr-{paid_up}"), format!("agr-{owing}")], "closing ends the agreement at the gateway");
    app.activate(again, &token, 1_000).await;
    let (_, view) = app.call("GET", &format!("/v1/cards/{again}"), Some(&token), None).await;
    assert_eq!(view["agreement_id"].as_str(), Some(format!("agr-{again}-2").as_str()), "a new agreement: {view}");
    app.keys(again, &token).await;
    app.api.stop().await;
}

/// A rider with `balance` beyond the deposit and a day's keys, the clock
/// ten minutes past the keys: the card, its session, its keys and when
/// they were issued.
async fn rider_with_keys(app: &App, phone: &str, balance: u64) -> (u64, String, TestRider, i64) {
    let (card, token) = app.register(phone).await;
    app.activate(card, &token, balance).await;
    let rider = app.keys(card, &token).await;
    let issued = app.m.h.clock.now_ms();
    app.m.h.clock.set(issued + 10 * MINUTE);
    (card, token, rider, issued)
}

/// When `rider`'s refund is due: its keys' end plus the accepted lateness.
fn refund_due(app: &App, rider: &TestRider) -> i64 {
    i64::from(rider.credential.claims.valid_until) * 1_000 + app.m.h.server.accounts().rides_arrive_within_ms
}

/// Runs refund passes at `due` until `card` closes.
async fn refund_passes_until_closed(app: &App, card: u64, due: i64) {
    for _ in 0..200 {
        match app.m.h.server.refund_pass_as_of(due).await {
            Ok(report) if report.closed == vec![card] => return,
            Ok(_) | Err(ServerError::PricingBehind(_)) => {}
            Err(error) => panic!("refund pass: {error}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("card {card} never closed");
}

/// A refund pass at `due` is held back (pricing is behind) and `card`
/// stays refund-pending.
async fn assert_refund_pass_held(app: &App, card: u64, due: i64) {
    let server = &app.m.h.server;
    let waited = server.refund_pass_as_of(due).await;
    assert!(matches!(waited, Err(ServerError::PricingBehind(_))), "{waited:?}");
    assert_eq!(server.accounts().account(card).await.expect("account").state, AccountState::RefundPending);
}

/// What `card`'s payer paid in all, at the gateway: debits less credits.
async fn paid_in_all(app: &App, card: u64) -> i64 {
    let payer = format!("payer-{card}");
    let ledger = app.m.control.ledger().await.expect("ledger");
    ledger
        .iter()
        .filter(|e| e.payment_user_id == payer && e.applied_payment().is_some())
        .map(|e| -e.balance_change())
        .sum()
}

/// Issue 17 item 4: the refund pass prices every ride acked before it. A
/// ride still in the log when the pass comes (the pricer fell behind: a
/// backlog after a restart, a store that refused a write) holds the
/// close; once priced, the rider pays for it exactly once and the rest of
/// the deposit goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_pass_waits_for_rides_the_pricer_has_not_reached() {
    let app = App::start().await;
    let (card, token, rider, issued) = rider_with_keys(&app, "+8613800000040", 5_000).await;
    app.m.h.faults.set_pricing_stalled(true);
    let ride = vec![tap(&rider, 1, issued + 5 * MINUTE, TapKind::Single, "bus-99")];
    app.m.h.client().push(&batch("depot-1", 1, ride)).await.expect("acked while the pricer is stalled");
    app.request_refund(card, &token).await;
    let due = refund_due(&app, &rider);
    assert_refund_pass_held(&app, card, due).await;

    app.m.h.faults.set_pricing_stalled(false);
    refund_passes_until_closed(&app, card, due).await;
    assert_eq!(paid_in_all(&app, card).await, 300, "the ride's fare, once");
    app.api.stop().await;
}

/// The same for a ride received before the pass but not yet in the log
/// (its record waits for a full disk): the pricer has priced all that is
/// durable, and the pass still waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_pass_waits_for_rides_received_but_not_yet_logged() {
    let app = App::start().await;
    let (card, token, rider, issued) = rider_with_keys(&app, "+8613800000041", 5_000).await;
    app.m.h.faults.set_disk_full(true);
    let ride = vec![tap(&rider, 1, issued + 5 * MINUTE, TapKind::Single, "bus-99")];
    let client = app.m.h.client();
    let push = tokio::spawn(async move { client.push(&batch("depot-1", 1, ride)).await });
    let server = &app.m.h.server;
    while server.wal_progress().state != WalState::DiskFull {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    app.request_refund(card, &token).await;
    let due = refund_due(&app, &rider);
    assert_refund_pass_held(&app, card, due).await;

    app.m.h.faults.set_disk_full(false);
    let _ = push.await.expect("push task");
    refund_passes_until_closed(&app, card, due).await;
    assert_eq!(paid_in_all(&app, card).await, 300, "the ride's fare, once");
    app.api.stop().await;
}

/// Two refund passes at one moment (the job and an operator's call) pay
/// the deposit back once, and neither reports the other's card failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refund_passes_at_once_return_the_deposit_once_and_fail_nothing() {
    let app = App::start().await;
    let (card, token, rider, _) = rider_with_keys(&app, "+8613800000042", 0).await;
    app.request_refund(card, &token).await;
    let due = refund_due(&app, &rider);
    let server = &app.m.h.server;
    let (first, second) = tokio::join!(server.refund_pass_as_of(due), server.refund_pass_as_of(due));
    let (first, second) = (first.expect("first pass"), second.expect("second pass"));
    assert!(first.failed.is_empty() && second.failed.is_empty(), "{first:?} {second:?}");
    assert_eq!([first.closed, second.closed].concat(), vec![card], "closed once");
    assert_eq!(paid_in_all(&app, card).await, 0, "the deposit back, once");
    app.api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_call_inputs_at_their_extremes_get_a_4xx_with_a_reason() {
    let app = App::start().await;
    let (card, token) = app.register("+8613800000040").await;
    for path in ["0", "18446744073709551615", "18446744073709551616", "-1", "%20"] {
        assert_eq!(app.call("GET", &format!("/v1/cards/{path}"), Some(&token), None).await.0, 404, "{path}");
    }
    let (status, body) = app.call("GET", "/v1/nowhere", None, None).await;
    assert_eq!((status, error_of(&body)), (404, "no_such_call".into()), "JSON even for a path that does not exist");
    let (status, body) = app.call("GET", "/v1/otp", None, None).await;
    assert_eq!((status, error_of(&body)), (404, "no_such_call".into()), "and for a method the path does not take");
    let long_token = "t".repeat(129);
    assert_eq!(app.call("GET", &format!("/v1/cards/{card}"), Some(&long_token), None).await.0, 401);
    let activate = format!("/v1/cards/{card}/activate");
    for payer in [String::new(), "p".repeat(129), "line\nbreak".into()] {
        let (status, body) = app.call("POST", &activate, Some(&token), Some(json!({"payment_user_id": payer}))).await;
        assert_eq!((status, error_of(&body)), (400, "bad_request".into()), "{payer:?}");
    }
    for body in [json!({}), json!({"payment_user_id": 7}), json!(null)] {
        assert_eq!(app.call("POST", &activate, Some(&token), Some(body)).await.0, 400);
    }
    let payer = "p".repeat(128);
    app.m.control.top_up(&payer, 2_000, "topup-long").await.expect("top up");
    let (status, body) = app.call("POST", &activate, Some(&token), Some(json!({"payment_user_id": payer}))).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("active")), "the longest payer id: {body}");
    let (status, body) = app.call("POST", &activate, Some(&token), Some(json!({"payment_user_id": "again"}))).await;
    assert_eq!((status, error_of(&body)), (409, "wrong_state".into()), "activated once");
    let (status, body) = app.call("POST", &format!("/v1/cards/{card}/arrears/pay"), Some(&token), None).await;
    assert_eq!((status, error_of(&body)), (409, "wrong_state".into()), "nothing owed: {body}");
    app.api.stop().await;
}

/// Issue 17 item 1: once a code's wrong tries were spent its challenge was
/// deleted, so the resend limit found no recent code and sent another at
/// once: 20 codes and 100 guesses in a tenth of a second. Wrong codes now
/// count against the phone for an hour, across its codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_phones_code_is_capped_per_hour_across_codes() {
    let app = App::start().await;
    let phone = "+8613800000050";
    let (mut sent, mut guessed) = (0, 0);
    for round in 0..20 {
        app.m.h.clock.set(app.m.h.clock.now_ms() + 31_000);
        if app.call("POST", "/v1/otp", None, Some(json!({"phone": phone}))).await.0 == 202 {
            sent += 1;
        }
        let right = app.m.h.inbox.last_to(phone).map(|m| m.rsplit(' ').next().unwrap_or_default().to_string());
        for n in 0..5 {
            let wrong = format!("{:06}", (round * 5 + n) % 1_000_000);
            if Some(&wrong) == right.as_ref() {
                continue;
            }
            let (status, body) =
                app.call("POST", "/v1/register", None, Some(json!({"phone": phone, "code": wrong}))).await;
            match status {
                401 => guessed += 1,
                429 => assert!(error_of(&body) == "too_many_requests", "{body}"),
                other => panic!("{other}: {body}"),
            }
        }
    }
    assert_eq!(guessed, 10, "api.otp_wrong_codes_per_phone_per_hour_max guesses in an hour, whatever the codes");
    assert!(sent <= 5, "{sent} codes sent to one phone in an hour");
    assert_eq!(app.m.h.inbox.all_to(phone).len(), sent);
    let code = app.m.h.inbox.last_to(phone).expect("a code").rsplit(' ').next().expect("code").to_string();
    let (status, _) = app.call("POST", "/v1/register", None, Some(json!({"phone": phone, "code": code}))).await;
    assert_eq!(status, 429, "while the phone is locked even the right code is not checked");
    app.m.h.clock.set(app.m.h.clock.now_ms() + 3_600_000);
    assert!(app.register(phone).await.0 > 0, "an hour later the rider signs up");
    app.api.stop().await;
}

/// Issue 17 item 1: twenty requests at once for one phone sent up to six
/// codes (the check and the insert were two transactions); sends are
/// also limited per client and in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_sent_once_at_a_time_and_limited_per_client_and_in_total() {
    let app = App::start_with(|s| {
        s.otp_sends_per_client_per_hour_max = 4;
        s.otp_sends_per_minute_max = 6;
        s.client_address_header = Some("x-forwarded-for".into());
    })
    .await;
    let url = format!("{}/v1/otp", app.api.url());
    let at_once = (0..20).map(|_| {
        let (http, url) = (app.http.clone(), url.clone());
        tokio::spawn(async move {
            http.post(url).json(&json!({"phone": "+8613800000060"})).send().await.expect("send").status().as_u16()
        })
    });
    let statuses: Vec<u16> =
        futures_util::future::join_all(at_once).await.into_iter().map(|s| s.expect("task")).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 202).count(), 1, "{statuses:?}");
    assert_eq!(app.m.h.inbox.all_to("+8613800000060").len(), 1, "one code sent");
    let ask = |phone: String, client: &str| {
        let request = app.http.post(url.clone()).header("x-forwarded-for", client).json(&json!({"phone": phone}));
        async move { request.send().await.expect("send").status().as_u16() }
    };
    // The 20 requests above came from 127.0.0.1 with no header: they count
    // for the client "127.0.0.1"; these count for 203.0.113.7, the address
    // the proxy appended, whatever the client put before it.
    for n in 1..=3 {
        assert_eq!(
            ask(format!("+86138000001{n:02}"), ["1.1.1.1, 203.0.113.7", "2.2.2.2,203.0.113.7", "203.0.113.7"][n - 1])
                .await,
            202,
            "{n}"
        );
    }
    assert_eq!(ask("+8613800000104".into(), "203.0.113.7").await, 202, "the fourth from one client");
    assert_eq!(ask("+8613800000105".into(), "203.0.113.7").await, 429, "a fifth within the hour");
    assert_eq!(ask("+8613800000106".into(), "198.51.100.1").await, 202, "another client: the sixth in the minute");
    assert_eq!(ask("+8613800000107".into(), "198.51.100.2").await, 429, "a seventh in the minute, whoever asks");
    app.m.h.clock.set(app.m.h.clock.now_ms() + 61_000);
    assert_eq!(ask("+8613800000107".into(), "198.51.100.2").await, 202, "the next minute");
    app.api.stop().await;
}

/// Fuzzing the account API's request bodies (issue 19): bodies mutated
/// from valid ones (`tests/fuzz_corpus/api_body/`), sent to every call
/// that reads one, with a rider's token. Each gets an answer: a refusal
/// that says why in JSON, never an internal error, and the server still
/// serves the rider afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_request_bodies_are_refused_clearly_never_with_an_internal_error() {
    let app = App::start().await;
    let (card, token) = app.register("+8613800000099").await;
    let seeds = || {
        [
            json!({"phone": "+8613800000001"}),
            json!({"phone": "+8613800000001", "code": "123456"}),
            json!({"payment_user_id": "payer-1"}),
            json!({"public_key_hex": hex::encode([9u8; 32])}),
            json!({}),
        ]
        .iter()
        .map(|v| v.to_string().into_bytes())
        .collect()
    };
    let calls = [
        "/v1/otp".to_string(),
        "/v1/register".into(),
        format!("/v1/cards/{card}/activate"),
        format!("/v1/cards/{card}/keys"),
    ];
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        crate::fuzz::run("api_body", seeds, 120, |body| {
            for path in &calls {
                let send = app.http.post(format!("{}{path}", app.api.url())).bearer_auth(&token).body(body.to_vec());
                let response =
                    runtime.block_on(send.header("content-type", "application/json").send()).expect("an answer");
                let status = response.status().as_u16();
                let text = runtime.block_on(response.text()).expect("body");
                proptest::prop_assert!(status != 500, "{path}: internal error for {body:?}: {text}");
                if status >= 400 {
                    let refusal = serde_json::from_str::<ErrorBody>(&text);
                    proptest::prop_assert!(refusal.is_ok(), "{path}: {status} without a JSON reason: {text}");
                }
            }
            Ok(())
        });
    });
    let (status, body) = app.call("GET", &format!("/v1/cards/{card}"), Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    app.api.stop().await;
}
