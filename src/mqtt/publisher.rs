//! A publishing connection, for replay `--to-mqtt`.

use super::*;

/// A connection that only publishes (replay `--to-mqtt`), with the options
/// of [`client_options`]. It makes one attempt and never reconnects: a
/// reconnect would silently drop what rumqttc had in flight, so any
/// connection error ends it, and [`Publisher::failed`] says why.
pub(crate) struct Publisher {
    client: AsyncClient,
    task: JoinHandle<()>,
    failure: mpsc::Receiver<String>,
}

impl Publisher {
    /// Starts connecting in the background. Fails only on settings that
    /// can never work (a bad CA file).
    pub(crate) fn connect(settings: &MqttSettings) -> Result<Publisher> {
        let options = client_options(settings)?;
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let endpoint = settings.endpoint();
        let (fail, failure) = mpsc::channel(1);
        // The event loop runs on its own task; publishing awaits the client.
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        let _ = fail.try_send(format!("MQTT broker {endpoint}: {}", describe(&e)));
                        return;
                    }
                }
            }
        });
        Ok(Publisher {
            client,
            task,
            failure,
        })
    }

    /// Queues one PUBLISH, waiting while rumqttc's request queue is full.
    pub(crate) async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<()> {
        let qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .context("cannot publish")
    }

    /// Resolves when the connection has failed, with the reason.
    pub(crate) async fn failed(&mut self) -> String {
        self.failure
            .recv()
            .await
            .unwrap_or_else(|| "MQTT connection closed".into())
    }

    /// Sends DISCONNECT after every queued PUBLISH and waits up to `timeout`
    /// for it to go out (requests leave in order: once it is out, so is
    /// everything before it). The error says why not.
    pub(crate) async fn finish(mut self, timeout: Duration) -> Result<(), String> {
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(timeout, &mut self.task).await.is_err() {
            self.task.abort();
            return Err("timed out sending the last messages".into());
        }
        match self.failure.try_recv() {
            Ok(reason) => Err(reason),
            Err(_) => Ok(()),
        }
    }
}
