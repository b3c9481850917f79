//! The queue between the poll task and the subscriber, bounded by count
//! and by bytes.

use super::*;

/// Messages that may wait between the poll task and the consumer.
pub(super) const QUEUE_MESSAGES: usize = 1024;

/// Bytes (topic and payload) those messages may hold together. Without it,
/// 1024 messages of up to [`MAX_PACKET_SIZE`] could pin 16 GiB; 64 MiB
/// still takes four of the largest, or thousands of the P3's sub-kilobyte
/// ones, so it never binds at the P3's cadence.
///
/// A full queue makes the poll task wait for room: it then stops reading
/// the socket, and TCP pushes back on the broker. Dropping instead would
/// lose readings, which collect promises not to. The wait is on the queue
/// alone, never on a client call, and gives way to a stop. The consumer
/// (decode, then a hand-off to the forwarder) takes microseconds per
/// message, so the queue fills only if the consumer is stuck.
pub(super) const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// A message in the queue with its share of the byte budget, given back
/// when the consumer takes it.
pub(super) struct Queued {
    pub(super) message: Message,
    _bytes: OwnedSemaphorePermit,
}

/// The poll task's end of the queue (see [`QUEUE_BYTES`]).
pub(super) struct QueueTx {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

/// The consumer is gone.
pub(super) struct Closed;

impl QueueTx {
    /// Waits until there is room by count and by bytes, then queues
    /// `message`. One larger than the whole budget waits for an empty
    /// queue.
    pub(super) async fn push(&self, message: Message) -> Result<(), Closed> {
        let cost = message.bytes().min(self.budget);
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Queued {
                message,
                _bytes: permit,
            })
            .await
            .map_err(|_| Closed)
    }
}

/// A queue of at most `messages` messages holding at most `bytes` bytes.
pub(super) fn queue(messages: usize, bytes: usize) -> (QueueTx, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(messages);
    let budget = bytes.min(u32::MAX as usize);
    let tx = QueueTx {
        tx,
        bytes: Arc::new(Semaphore::new(budget)),
        budget,
    };
    (tx, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of `bytes` bytes, topic and payload together.
    fn message(bytes: usize) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::from(vec![b'x'; bytes - 1]),
            qos: 0,
            retain: false,
            received: Timestamp::from_unix_micros(0),
        }
    }

    /// Polls `future` once: is it still waiting?
    fn waits<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        future.poll(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_bytes_as_well_as_count() {
        let (tx, mut rx) = queue(10, 100);
        assert!(tx.push(message(60)).await.is_ok());
        // 120 bytes would be over: the second waits, though the count is
        // far from full.
        let second = tx.push(message(60));
        tokio::pin!(second);
        assert!(waits(second.as_mut()));
        let first = rx.recv().await.expect("the first message");
        assert!(
            waits(second.as_mut()),
            "its bytes are free once it is dropped"
        );
        drop(first);
        assert!(second.await.is_ok());
        // Larger than the whole budget: waits for an empty queue, then goes.
        let big = tx.push(message(1_000));
        tokio::pin!(big);
        assert!(waits(big.as_mut()));
        drop(rx.recv().await);
        assert!(big.await.is_ok());
        assert_eq!(rx.recv().await.map(|q| q.message.payload.len()), Some(999));
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_count() {
        let (tx, mut rx) = queue(2, 1_000);
        assert!(tx.push(message(1)).await.is_ok());
        assert!(tx.push(message(1)).await.is_ok());
        let third = tx.push(message(1));
        tokio::pin!(third);
        assert!(waits(third.as_mut()));
        drop(rx.recv().await);
        assert!(third.await.is_ok());
        // Once the consumer is gone, pushing fails instead of waiting.
        drop(rx);
        assert!(tx.push(message(1)).await.is_err());
    }
}
