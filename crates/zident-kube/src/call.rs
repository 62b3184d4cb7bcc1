//! One call to the API server, bounded by [`REQUEST_TIMEOUT`] and sorted by what the caller
//! does next: a conflict (409) means "read again and decide again", not-found (404) means "it
//! is not there", anything else is a failure to report or retry.

use crate::connection::REQUEST_TIMEOUT;

/// Why a call did not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// 409: the object exists already, or changed since the resourceVersion the write carried.
    #[error("changed meanwhile: {0}")]
    Conflict(String),
    /// 404: no such object.
    #[error("not found: {0}")]
    NotFound(String),
    /// Refused for another reason, or no answer in time.
    #[error("{0}")]
    Failed(String),
}

/// Runs `call` within [`REQUEST_TIMEOUT`].
pub(crate) async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(CallError::Conflict(s.message)),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Err(CallError::NotFound(s.message)),
        Ok(Err(e)) => Err(CallError::Failed(e.to_string())),
        Err(_) => Err(CallError::Failed(format!(
            "no answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// `Ok(None)` for a 404, so that a read of something absent is not an error.
pub(crate) fn found<T>(result: Result<T, CallError>) -> Result<Option<T>, CallError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(CallError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conflicts_and_absences_are_told_apart_from_failures() {
        let api_error = |code: u16| {
            let status: kube::core::Status = serde_json::from_value(serde_json::json!({
                "code": code, "message": format!("answer {code}")
            }))
            .unwrap();
            kube::Error::Api(Box::new(status))
        };
        let call = |code: u16| bounded(async move { Err::<(), _>(api_error(code)) });
        assert!(matches!(call(409).await, Err(CallError::Conflict(m)) if m == "answer 409"));
        assert!(matches!(call(404).await, Err(CallError::NotFound(_))));
        assert!(matches!(found(call(404).await), Ok(None)));
        for code in [403, 422, 500] {
            assert!(
                matches!(call(code).await, Err(CallError::Failed(_))),
                "{code}"
            );
        }
        assert!(matches!(
            bounded(async { Ok::<u8, kube::Error>(7) }).await,
            Ok(7)
        ));
    }
}
