//! The response side of a bidirectional room session (chat, collaboration): one stream that
//! merges, in priority order,
//! 1. the session's own control messages (answers meant for this client alone, a failure, or
//!    the request to finish),
//! 2. the room's durable log through the one catch-up [`Subscription`],
//! 3. ephemeral signals from the other members (a [`Relay`]), once the replay has caught up.
//!
//! It holds no task of its own and buffers nothing beyond the subscription's bounded pages and
//! the room's bounded signal channel: when the client stops reading, everything behind it
//! stops too. It never reads the store or decides what to store.
//!
//! It also names where a session's client messages come from ([`Inbound`]): the request
//! stream of a bidirectional call (Chat, Collaborate), or nothing at all for their
//! server-streaming twins (JoinRoom, OpenDocument), whose session lasts until the client drops
//! this response stream. Both kinds run the one session code of their room.

use crate::log::{Delivery, Subscription};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

/// Where a session's client messages come from.
pub(crate) enum Inbound<T> {
    /// A bidirectional call's request stream (Chat, Collaborate). Boxed: one allocation per
    /// session keeps [`Inbound::Held`] small.
    Client(Box<Streaming<T>>),
    /// A server-streaming call (JoinRoom, OpenDocument): the client sends nothing after its
    /// request, so no message ever arrives and the stream never ends by itself. The session
    /// ends when the client drops the response ([`SessionOutput`]), which closes the session's
    /// control channel, exactly as when a bidirectional client goes away.
    Held,
}

impl<T> Inbound<T> {
    /// The next client message; `None` when the client finished its side. Cancel-safe, like
    /// [`Streaming::message`]. Never resolves for [`Inbound::Held`].
    pub(crate) async fn message(&mut self) -> Result<Option<T>, Status> {
        match self {
            Inbound::Client(stream) => stream.message().await,
            Inbound::Held => std::future::pending().await,
        }
    }
}

/// Items that carry a room sequence (0 for ephemeral ones).
pub(crate) trait Sequenced {
    fn sequence(&self) -> u64;
}

impl Sequenced for crate::proto::ChatMessage {
    fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl Sequenced for crate::proto::CollaborationEvent {
    fn sequence(&self) -> u64 {
        self.sequence
    }
}

/// What the session's inbound side tells its response side.
#[derive(Debug)]
pub(crate) enum Control<T> {
    /// An item for this client alone (a REJECTED operation, …).
    Send(T),
    /// End the stream with this status.
    Fail(Status),
    /// The client finished its side and the session is storing its last record (a leave
    /// notice): hold the log back until the drain point is known, so that the stream ends
    /// exactly there instead of running past it with records committed meanwhile.
    Finishing,
    /// The client finished its side: deliver the log through this sequence, then end with OK.
    DrainThrough(u64),
}

/// Ephemeral signals for one member, polled only after the replay has caught up.
pub(crate) trait Relay<T>: Send + Unpin {
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>>;
}

/// The merged response stream of one session.
pub(crate) struct SessionOutput<T, R> {
    control: mpsc::Receiver<Control<T>>,
    durable: Subscription<T>,
    relay: R,
    caught_up: bool,
    /// Set between [`Control::Finishing`] and the drain point: deliver nothing yet.
    holding: bool,
    /// Set once the client finished: end after the durable item with this sequence.
    drain_through: Option<u64>,
    /// The last durable sequence delivered (or skipped by the replay's start).
    delivered_through: u64,
    relay_done: bool,
    ended: bool,
}

impl<T, R> SessionOutput<T, R> {
    pub(crate) fn new(
        control: mpsc::Receiver<Control<T>>,
        durable: Subscription<T>,
        replay_after: u64,
        relay: R,
    ) -> Self {
        SessionOutput {
            control,
            durable,
            relay,
            caught_up: false,
            holding: false,
            drain_through: None,
            delivered_through: replay_after,
            relay_done: false,
            ended: false,
        }
    }
}

impl<T: Sequenced, R: Relay<T>> Stream for SessionOutput<T, R> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        while this.drain_through.is_none() {
            match this.control.poll_recv(cx) {
                Poll::Ready(Some(Control::Send(item))) => return Poll::Ready(Some(Ok(item))),
                Poll::Ready(Some(Control::Finishing)) => this.holding = true,
                Poll::Ready(Some(Control::Fail(status))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Control::DrainThrough(through))) => {
                    this.drain_through = Some(through);
                }
                // The session is over without a drain (the client went away, or shutdown).
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                // Woken by the control channel once the drain point arrives.
                Poll::Pending if this.holding => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        if this
            .drain_through
            .is_some_and(|through| this.delivered_through >= through)
        {
            this.ended = true;
            return Poll::Ready(None);
        }
        loop {
            match this.durable.poll_delivery(cx) {
                Poll::Ready(Some(Ok(Delivery::Item(item)))) => {
                    this.delivered_through = this.delivered_through.max(item.sequence());
                    return Poll::Ready(Some(Ok(item)));
                }
                Poll::Ready(Some(Ok(Delivery::CaughtUp))) => this.caught_up = true,
                Poll::Ready(Some(Err(status))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        if this.caught_up && !this.relay_done && this.drain_through.is_none() {
            match this.relay.poll_relay(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(Ok(item))),
                Poll::Ready(None) => this.relay_done = true,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}
