// TEMPORARY STUB — replaced by the helper's module.
use std::path::{Path, PathBuf};
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub smtp: Option<String>,
}
#[derive(Debug, Clone)]
pub struct Settings;
impl Settings {
    pub fn from_raw(
        _raw: RawSettings,
        _resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Settings, (&'static str, String)> {
        Ok(Settings)
    }
}
pub struct Facts<'a> {
    pub job_id: &'a str,
    pub domain: &'a str,
    pub mode: crate::job::Mode,
    pub succeeded: bool,
    pub error: Option<&'a str>,
    pub report: Option<&'a crate::report::Report>,
}
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub to: String,
}
pub fn send(_s: &Settings, to: &str, _f: &Facts) -> Outcome {
    Outcome { to: to.into() }
}
