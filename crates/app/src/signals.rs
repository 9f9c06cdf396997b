//! The signals the daemon answers: SIGTERM and SIGINT stop it, SIGHUP reloads its config.

/// SIGTERM and SIGINT (stop) and SIGHUP (reload), caught from the moment this is made: a
/// stop asked for while the gateway is still starting (opening the store, binding ports) is
/// a clean stop too, and a SIGHUP then is not the default action that kills the process.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers now.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next stop or reload asked for.
    pub async fn next(&mut self) -> Asked {
        #[cfg(unix)]
        {
            let hup = async {
                match &mut self.hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            match (&mut self.term, &mut self.int) {
                (Some(t), Some(i)) => {
                    tokio::select! {
                        _ = t.recv() => Asked::Stop,
                        _ = i.recv() => Asked::Stop,
                        _ = hup => Asked::Reload,
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    Asked::Stop
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Asked::Stop
        }
    }

    /// Resolves when a stop is asked for (a SIGHUP meanwhile is caught and ignored).
    pub async fn stop(&mut self) {
        while self.next().await == Asked::Reload {}
    }
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

/// Resolves when the process is asked to stop (SIGINT, SIGTERM).
pub async fn stop_signal() {
    Signals::install().stop().await
}
