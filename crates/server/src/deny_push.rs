//! The deny list, pushed: on each gateway connection the server opens one
//! unidirectional stream, sends the whole list in pages, then the changes
//! as the hub's version moves (within a poll of the decline or payment
//! that made them). A gateway that stops reading only stalls its own
//! stream: QUIC's flow control holds the writer, and each round computes
//! its updates afresh from the log, so nothing queues up per gateway.

use std::sync::Arc;

use crate::Shared;
use farestream_gateway::wire::write_message;
use farestream_ingest::telemetry;

pub(super) async fn push_deny_list(connection: quinn::Connection, shared: Arc<Shared>) {
    let Ok(mut stream) = connection.open_uni().await else { return };
    let hub = Arc::clone(&shared.deny_list);
    let mut versions = hub.subscribe();
    let mut known = None;
    loop {
        versions.borrow_and_update();
        let updates = hub.updates_since(known, shared.settings.deny_list_page_cards_max);
        for update in &updates {
            if write_message(&mut stream, update).await.is_err() {
                return;
            }
            known = Some(update.version);
        }
        telemetry::deny_list_updates_sent(updates.len());
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = connection.closed() => return,
            changed = versions.changed() => if changed.is_err() { return },
        }
    }
}
