//! Every rider of a simulated city signs up through the account API before
//! the day: a code, a token, a top-up at the simulated bank, activation
//! (agreement and deposit), and the day's credential for the key the
//! rider's phone made. The world then rides on what the API issued.

use futures_util::StreamExt;
use indicatif::ProgressBar;

use super::app::{AppError, RiderApp, Session};
use super::world::World;
use crate::paygw::SimControl;
use crate::ridecode::Credential;

/// Riders signing up at once.
const SIGNUPS_IN_FLIGHT_MAX: usize = 32;

/// A rider with an account.
#[derive(Debug, Clone)]
pub struct Member {
    pub session: Session,
    pub phone: String,
    pub payer: String,
    /// The rider's bank holds less than a day's rides.
    pub short: bool,
}

/// How much the simulated banks hold after the deposit.
#[derive(Debug, Clone, Copy)]
pub struct Balances {
    pub deposit_cents: u64,
    pub ample_cents: u64,
    pub short_cents: u64,
    /// One rider in this many is short (0: none).
    pub short_every: usize,
}

/// Signs every rider of `world` up and gives each the card and credential
/// the API issued; returns the members, in rider order.
pub async fn sign_up_riders(
    world: &mut World,
    app: &RiderApp,
    bank: &SimControl,
    balances: Balances,
    progress: &ProgressBar,
) -> Result<Vec<Member>, AppError> {
    let phones: Vec<String> = (0..world.riders.len()).map(|i| phone(world.seed(), i)).collect();
    let keys: Vec<[u8; 32]> = world.riders.iter().map(|r| r.key.public_key()).collect();
    let results = futures_util::stream::iter(phones.into_iter().zip(keys).enumerate())
        .map(|(index, (phone, public_key))| async move {
            let short = balances.short_every > 0 && index % balances.short_every == balances.short_every - 1;
            let session = app.sign_up(&phone).await?;
            let payer = format!("payer-{}", session.card_id);
            let balance = balances.deposit_cents + if short { balances.short_cents } else { balances.ample_cents };
            bank.top_up(&payer, balance, &format!("topup-{}-0", session.card_id))
                .await
                .map_err(|e| AppError::Http(format!("the simulated bank: {e}")))?;
            app.activate(&session, &payer).await?;
            let credential = app.daily_keys(&session, public_key).await?;
            progress.inc(1);
            Ok::<_, AppError>((Member { session, phone, payer, short }, credential))
        })
        .buffered(SIGNUPS_IN_FLIGHT_MAX)
        .collect::<Vec<_>>()
        .await;
    let mut members = Vec::with_capacity(results.len());
    let mut issued: Vec<(u64, Credential)> = Vec::with_capacity(results.len());
    for result in results {
        let (member, credential) = result?;
        issued.push((member.session.card_id, credential));
        members.push(member);
    }
    world.adopt(issued);
    Ok(members)
}

/// A phone number per rider, different for every city seed: `+` and 14 digits.
fn phone(seed: u64, index: usize) -> String {
    format!("+{:07}{:07}", 1_000_000 + seed % 9_000_000, index % 10_000_000)
}
