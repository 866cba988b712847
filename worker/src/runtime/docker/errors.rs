//! What a failed Docker call becomes. bollard's error stays the source; the runtime branches
//! on its status code (404, 409, 304, …), never on its text.

use std::fmt;
use std::time::Duration;

use bollard::errors::Error as BollardError;

use crate::runtime::RuntimeError;

/// Why the Docker runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// A call to the engine failed.
    Api {
        /// What the runtime was doing, when the engine's words alone would not say.
        doing: Option<&'static str>,
        #[source]
        source: BollardError,
    },
    /// An image pull that did not finish in time.
    PullTimeout(Duration),
    /// Another start of the same placement is creating its container right now.
    CreatedElsewhere,
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::Api { doing, source } => {
                if let Some(doing) = doing {
                    write!(f, "{doing}: ")?;
                }
                // The engine's own message, not bollard's "Docker responded with status
                // code …" around it: the code is in the source.
                match source {
                    BollardError::DockerResponseServerError { message, .. } => f.write_str(message),
                    other => write!(f, "{other}"),
                }
            }
            DockerError::PullTimeout(limit) => write!(f, "the pull took longer than {limit:?}"),
            DockerError::CreatedElsewhere => {
                f.write_str("the container is being created elsewhere")
            }
        }
    }
}

impl DockerError {
    /// The engine's failure while `doing` something.
    pub(super) fn api(doing: &'static str, source: BollardError) -> DockerError {
        DockerError::Api {
            doing: Some(doing),
            source,
        }
    }

    /// The engine's failure, in its own words only.
    pub(super) fn engine(source: BollardError) -> DockerError {
        DockerError::Api {
            doing: None,
            source,
        }
    }
}

/// The HTTP status of the engine's answer, if it answered.
pub(super) fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The runtime failed `doing` something; the operation may succeed if tried again.
pub(super) fn unavailable(doing: &'static str, e: BollardError) -> RuntimeError {
    RuntimeError::Unavailable(Box::new(DockerError::api(doing, e)))
}

/// An image inspect that failed: a 400 is the engine refusing the reference itself (it parses
/// it before looking), which no retry mends; anything else may pass.
pub(super) fn inspect_failed(image: &str, e: BollardError) -> RuntimeError {
    if status(&e) == Some(400) {
        image_unavailable(
            image,
            DockerError::api("the engine refused the reference", e),
        )
    } else {
        unavailable("inspecting the image", e)
    }
}

/// The container was created but the engine would not start it.
pub(super) fn start_failed(e: BollardError) -> RuntimeError {
    RuntimeError::StartFailed(Box::new(DockerError::engine(e)))
}

/// The task's image is not here and the engine could not get it.
pub(super) fn image_unavailable(image: &str, cause: DockerError) -> RuntimeError {
    RuntimeError::ImageUnavailable {
        image: image.to_string(),
        cause: Box::new(cause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        }
    }

    #[test]
    fn the_engine_speaks_for_itself_and_stays_the_source() {
        let e = unavailable("inspecting the image", server(500, "disk full"));
        assert_eq!(
            e.to_string(),
            "runtime error: inspecting the image: disk full"
        );
        let docker = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<DockerError>())
            .expect("the Docker error is the source");
        let bollard = std::error::Error::source(docker)
            .and_then(|s| s.downcast_ref::<BollardError>())
            .expect("bollard's error is its source");
        assert_eq!(status(bollard), Some(500));

        let e = start_failed(server(400, "executable file not found"));
        assert_eq!(
            e.to_string(),
            "container would not start: executable file not found"
        );
        let e = inspect_failed("a..b", server(400, "invalid reference format"));
        assert!(matches!(e, RuntimeError::ImageUnavailable { .. }));
        assert!(e
            .to_string()
            .ends_with("the engine refused the reference: invalid reference format"));
        let e = inspect_failed("a", server(500, "disk full"));
        assert!(matches!(e, RuntimeError::Unavailable(_)));
        let e = image_unavailable("nope:1", DockerError::PullTimeout(Duration::from_secs(2)));
        assert_eq!(
            e.to_string(),
            "image nope:1 is not present on this node and could not be pulled: \
             the pull took longer than 2s"
        );
    }
}
