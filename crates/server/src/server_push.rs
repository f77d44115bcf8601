//! What the server pushes to each gateway: on each connection it opens one
//! unidirectional stream and sends the issuer keys and the terminal keys
//! (with the version-1 cut-off, so validators refuse what the server does),
//! then the whole deny list in pages, then whatever changes as it changes (a rotation within
//! `keys.reload_interval_ms`, a decline or payment within a poll). A
//! gateway that stops reading only stalls its own stream: QUIC's flow
//! control holds the writer, and each round computes its updates afresh
//! (the latest key set, the deny list's changes from the log), so nothing
//! queues up per gateway.
//!
//! A gateway that negotiated the first protocol version (ALPN
//! `farestream/1`) gets bare deny-list updates and no keys.

use std::sync::Arc;

use crate::Shared;
use farestream_core::ridecode::PublishedKey;
use farestream_gateway::wire::{
    ALPN_V1, DenyListUpdate, IssuerKeySet, ServerPush, TerminalKeySet, server_push, write_message,
};
use farestream_ingest::issuer_keys::IssuerKeysNow;
use farestream_ingest::telemetry;

pub(super) async fn push_to_gateway(connection: quinn::Connection, shared: Arc<Shared>) {
    let Ok(mut stream) = connection.open_uni().await else { return };
    let first_version = negotiated_protocol(&connection).as_deref() == Some(ALPN_V1);
    let hub = Arc::clone(&shared.deny_list);
    let mut deny_versions = hub.subscribe();
    let mut keys = shared.issuer_keys.subscribe();
    let mut known = None;
    let mut keys_due = !first_version;
    loop {
        if keys_due {
            let now = Arc::clone(&keys.borrow_and_update());
            let issuer = ServerPush { update: Some(server_push::Update::IssuerKeys(issuer_key_set(&now))) };
            let cut_off = shared.pipeline.config().freshness.unsealed_refused_from_secs;
            let terminal = TerminalKeySet::from_held(&now.terminal, cut_off);
            let terminal = ServerPush { update: Some(server_push::Update::TerminalKeys(terminal)) };
            for push in [issuer, terminal] {
                if write_message(&mut stream, &push).await.is_err() {
                    return;
                }
            }
            telemetry::issuer_key_sets_sent();
        }
        deny_versions.borrow_and_update();
        let updates = hub.updates_since(known, shared.settings.deny_list_page_cards_max);
        for update in updates.iter() {
            if write_deny_list_update(&mut stream, update, first_version).await.is_err() {
                return;
            }
            known = Some(update.version);
        }
        telemetry::deny_list_updates_sent(updates.len());
        keys_due = false;
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = connection.closed() => return,
            changed = deny_versions.changed() => if changed.is_err() { return },
            changed = keys.changed(), if !first_version => match changed {
                Ok(()) => keys_due = true,
                Err(_) => return,
            },
        }
    }
}

async fn write_deny_list_update(
    stream: &mut quinn::SendStream,
    update: &DenyListUpdate,
    first_version: bool,
) -> std::io::Result<()> {
    if first_version {
        write_message(stream, update).await
    } else {
        write_message(stream, &ServerPush { update: Some(server_push::Update::DenyList(update.clone())) }).await
    }
}

/// The wire form of the keys published now.
fn issuer_key_set(keys: &IssuerKeysNow) -> IssuerKeySet {
    let published: Vec<PublishedKey> = keys.published.iter().map(|exported| exported.key).collect();
    IssuerKeySet::from_published(&published)
}

/// The ALPN protocol the handshake settled on.
fn negotiated_protocol(connection: &quinn::Connection) -> Option<Vec<u8>> {
    let data = connection.handshake_data()?;
    data.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}
