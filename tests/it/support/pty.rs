//! Running pv3 on a pseudo-terminal: for what it does only on a terminal
//! (colour in the log, progress bars, clap's coloured errors).

use std::fs::File;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// What a command wrote to its terminal (stdout and stderr together, with
/// the terminal's `\r\n` line ends), and how it ended.
pub struct PtyRun {
    pub status: ExitStatus,
    pub output: Vec<u8>,
}

impl PtyRun {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

/// Runs `cmd` with stdin, stdout and stderr on a new pseudo-terminal and
/// returns everything it wrote; kills it after `timeout`.
pub fn run_on_pty(cmd: &mut Command, timeout: Duration) -> PtyRun {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .expect("open a pseudo-terminal");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let open_side = || {
        rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal side")
    };
    cmd.stdin(Stdio::from(open_side()))
        .stdout(Stdio::from(open_side()))
        .stderr(Stdio::from(open_side()));
    let mut child = cmd.spawn().expect("spawn on the pseudo-terminal");
    // The parent's copies of the terminal side must go, or reading the
    // master never ends: `cmd` holds them until it is given new ones.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());

    let mut reader = File::from(master);
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                // EIO once the last writer has closed the terminal side:
                // the child has exited.
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let _ = done.send(out);
    });
    let output = match output.recv_timeout(timeout) {
        Ok(output) => output,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    };
    let status = child.wait().expect("wait for the child");
    PtyRun { status, output }
}
