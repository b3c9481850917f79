//! The publishing connection of `replay --to-mqtt`, on the one driver: it
//! reconnects like collect, and delivers every message across a broker
//! restart.
//!
//! A clean session forgets, at a reconnect, whatever rumqttc had queued or
//! in flight, so delivery is tracked here: every message goes at QoS 1 (the
//! broker confirms each one; a recorded QoS 2 goes as 1, a recorded 0 as 1
//! too, or nothing could tell what a dropped connection took with it), at
//! most [`WINDOW`] unconfirmed at once. When the connection is lost, the
//! unconfirmed ones go out again, in order, after the next CONNACK, before
//! anything new. At least once: one the broker took but whose PUBACK was
//! lost with the connection arrives twice.

use std::collections::VecDeque;

use super::*;

/// Messages handed to the broker and not yet confirmed, at most.
const WINDOW: usize = 64;

/// One message to publish.
#[derive(Debug, Clone)]
struct Outgoing {
    topic: String,
    retain: bool,
    payload: Bytes,
}

/// A message handed to rumqttc, with its packet id once written.
#[derive(Debug)]
struct InFlight {
    message: Outgoing,
    pkid: Option<u16>,
}

/// See the module docs.
pub(crate) struct Publisher {
    connection: Connection,
    connected: bool,
    /// Handed to rumqttc in this connection, in order, not yet confirmed.
    in_flight: VecDeque<InFlight>,
    /// Unconfirmed when a connection was lost: sent again first.
    again: VecDeque<Outgoing>,
    /// Messages the broker has confirmed.
    confirmed: u64,
}

impl Publisher {
    /// Starts connecting in the background. Fails only on settings that
    /// can never work (a bad CA file).
    pub(crate) fn connect(settings: &MqttSettings) -> Result<Publisher> {
        let plan = Plan::publisher(Role::Source).requests(WINDOW * 2);
        Ok(Publisher {
            connection: Connection::open(settings, plan)?,
            connected: false,
            in_flight: VecDeque::new(),
            again: VecDeque::new(),
            confirmed: 0,
        })
    }

    /// Publishes one message once there is room: waits while the
    /// connection is down or [`WINDOW`] messages await confirmation.
    pub(crate) async fn publish(&mut self, topic: String, retain: bool, payload: Vec<u8>) {
        self.room().await;
        self.send(Outgoing {
            topic,
            retain,
            payload: Bytes::from(payload),
        });
    }

    /// Waits until everything published is confirmed (across reconnects),
    /// at most `timeout`, then disconnects. How many the broker confirmed,
    /// and, if not all, how many it did not.
    pub(crate) async fn finish(mut self, timeout: Duration) -> (u64, Option<String>) {
        let settled = async {
            while !(self.in_flight.is_empty() && self.again.is_empty()) {
                self.resend();
                match self.connection.next().await {
                    Some(event) => self.on(event),
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(timeout, settled).await;
        let left = self.in_flight.len() + self.again.len();
        self.connection.close(Duration::from_secs(2)).await;
        let unconfirmed = (left > 0).then(|| {
            format!(
                "{left} messages not confirmed by the broker within {:.0} s",
                timeout.as_secs_f64()
            )
        });
        (self.confirmed, unconfirmed)
    }

    /// Handles events until a new message may go: connected, nothing to
    /// send again, and room in the window.
    async fn room(&mut self) {
        loop {
            self.resend();
            if self.connected && self.again.is_empty() && self.in_flight.len() < WINDOW {
                return;
            }
            match self.connection.next().await {
                Some(event) => self.on(event),
                // The driver is gone (only at a stop): nothing waits.
                None => return,
            }
        }
    }

    /// Sends what a lost connection left unconfirmed, while there is room.
    fn resend(&mut self) {
        while self.connected && self.in_flight.len() < WINDOW {
            let Some(message) = self.again.pop_front() else {
                return;
            };
            self.send(message);
        }
    }

    fn send(&mut self, message: Outgoing) {
        let client = self.connection.client();
        let queued = client.try_publish(
            message.topic.clone(),
            QoS::AtLeastOnce,
            message.retain,
            message.payload.clone(),
        );
        if queued.is_ok() {
            self.in_flight.push_back(InFlight {
                message,
                pkid: None,
            });
        } else {
            // rumqttc's queue is full (it holds twice the window): later.
            self.again.push_front(message);
        }
    }

    fn on(&mut self, event: super::driver::Event) {
        use super::driver::Event;
        match event {
            Event::Connected => self.connected = true,
            Event::Sent(pkid) => {
                if let Some(first) = self.in_flight.iter_mut().find(|m| m.pkid.is_none()) {
                    first.pkid = Some(pkid);
                }
            }
            Event::Acked(pkid) => {
                let at = self.in_flight.iter().position(|m| m.pkid == Some(pkid));
                if let Some(at) = at {
                    self.in_flight.remove(at);
                    self.confirmed += 1;
                }
            }
            Event::Lost { .. } => {
                self.connected = false;
                let mut again: VecDeque<Outgoing> =
                    self.in_flight.drain(..).map(|m| m.message).collect();
                again.append(&mut self.again);
                self.again = again;
            }
            Event::Subscribed | Event::Message(_) => {}
        }
    }
}
