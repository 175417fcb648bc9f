//! The demo's subscriber: an actor that writes every [`WorkflowFinished`] it receives as one JSON
//! line and remembers every announcement per workflow.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use baton::{WorkflowFinished, WorkflowId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use crate::failure::CliError;

/// Opens (creating or truncating) a JSON-lines events file.
pub(crate) fn create_events_file(path: &PathBuf) -> Result<File, CliError> {
    File::create(path).map_err(|e| CliError::new(format!("cannot create {}: {e}", path.display())))
}

/// Writes one event as a JSON line and flushes it, so that readers see whole lines at once.
pub(crate) fn write_event(out: &mut impl Write, event: &WorkflowFinished) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, event)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Messages to the recorder.
pub(crate) enum RecorderMessage {
    /// A workflow was announced.
    Finished(WorkflowFinished),
    /// Flush the file and hand back everything recorded.
    Finish {
        /// Receives the recording.
        reply: RpcReplyPort<Recording>,
    },
}

impl From<WorkflowFinished> for RecorderMessage {
    fn from(event: WorkflowFinished) -> Self {
        RecorderMessage::Finished(event)
    }
}

/// Everything the recorder received.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    /// Every announcement, by workflow, in the order received.
    pub(crate) events: HashMap<WorkflowId, Vec<WorkflowFinished>>,
    /// The first error writing the events file, if any.
    pub(crate) write_error: Option<String>,
    /// Lines written to the events file.
    pub(crate) lines_written: u64,
}

/// The recorder actor.
pub(crate) struct Recorder;

/// What the recorder is handed at start.
pub(crate) struct RecorderArgs {
    /// Where to write events, if anywhere.
    pub(crate) out: Option<File>,
    /// The workflows the caller is waiting for.
    pub(crate) expected: HashSet<WorkflowId>,
    /// Published after each event: how many of the expected workflows have been announced.
    pub(crate) announced: watch::Sender<usize>,
}

/// The recorder's state.
pub(crate) struct RecorderState {
    out: Option<BufWriter<File>>,
    expected: HashSet<WorkflowId>,
    announced: watch::Sender<usize>,
    recording: Recording,
}

impl RecorderState {
    fn record(&mut self, event: WorkflowFinished) {
        if let Some(out) = self.out.as_mut() {
            match write_event(out, &event) {
                Ok(()) => self.recording.lines_written += 1,
                Err(e) => {
                    self.recording
                        .write_error
                        .get_or_insert_with(|| e.to_string());
                }
            }
        }
        let id = event.workflow_id;
        let list = self.recording.events.entry(id).or_default();
        list.push(event);
        if list.len() == 1 && self.expected.contains(&id) {
            self.announced.send_modify(|n| *n += 1);
        }
    }

    fn finish(&mut self) -> Recording {
        if let Some(mut out) = self.out.take()
            && let Err(e) = out.flush()
        {
            self.recording
                .write_error
                .get_or_insert_with(|| e.to_string());
        }
        std::mem::take(&mut self.recording)
    }
}

impl Actor for Recorder {
    type Msg = RecorderMessage;
    type State = RecorderState;
    type Arguments = RecorderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RecorderArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RecorderState {
            out: args.out.map(BufWriter::new),
            expected: args.expected,
            announced: args.announced,
            recording: Recording::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RecorderMessage::Finished(event) => state.record(event),
            RecorderMessage::Finish { reply } => {
                let _ = reply.send(state.finish());
            }
        }
        Ok(())
    }
}
