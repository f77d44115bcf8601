//! Serving an axum router on a TCP address until told to stop: the
//! account API and the simulated payment gateway share it.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// A running HTTP server.
pub struct HttpHandle {
    pub local_addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HttpHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting, lets requests in flight finish, and waits.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves `app`; `what` names it in the log.
pub async fn serve(listen: SocketAddr, app: axum::Router, what: &'static str) -> std::io::Result<HttpHandle> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let task = tokio::spawn(async move {
        // Handlers may read the peer's address (the account API limits
        // one-time codes per client).
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(error) = served.await {
            tracing::error!(%error, what, "HTTP server stopped");
        }
    });
    tracing::info!(%local_addr, what, "listening");
    Ok(HttpHandle { local_addr, stop, task })
}
