//! The benchmark's timing wrappers (`xdp-prog/src/timing.rs`): loaded from
//! the same object as the datapath, so they share its maps, and only on
//! request ([`Datapath::load_timing`]); the daemon never loads them.
use aya::programs::Xdp;

use super::{Datapath, DatapathError, TestRunOutcome};

/// One of the timing wrappers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrapper {
    /// The main program's work with the steering program's called directly,
    /// then the frame restored (`xdpgate_time_path`).
    Path,
    /// The same restoration around nothing (`xdpgate_time_noop`).
    Noop,
}

impl Wrapper {
    /// The program's name in the object.
    pub fn program_name(self) -> &'static str {
        match self {
            Wrapper::Path => "xdpgate_time_path",
            Wrapper::Noop => "xdpgate_time_noop",
        }
    }
}

impl Datapath {
    /// Loads both timing wrappers (measurement only: they share the
    /// datapath's maps; the daemon never loads them).
    pub fn load_timing(&mut self) -> Result<(), DatapathError> {
        for w in [Wrapper::Path, Wrapper::Noop] {
            let name = w.program_name();
            self.tail_program(name)?
                .load()
                .map_err(|source| DatapathError::VerifyTiming { name, source })?;
        }
        Ok(())
    }

    /// Instructions the verifier processed for a loaded timing wrapper.
    pub fn timing_verified_instructions(&mut self, w: Wrapper) -> Option<u32> {
        let prog: &mut Xdp = self.tail_program(w.program_name()).ok()?;
        prog.info().ok()?.verified_instruction_count()
    }

    /// [`Datapath::test_run`] of a timing wrapper loaded with
    /// [`Datapath::load_timing`].
    pub fn timing_test_run(
        &mut self,
        w: Wrapper,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome, DatapathError> {
        super::test_run_of(self.tail_program(w.program_name())?, frame, repeat)
    }
}
