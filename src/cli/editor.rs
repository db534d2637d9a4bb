//! `net-edit` and `edit`: a definition opened in the user's editor.

use anyhow::Context;

use crate::state::Store;

/// Write `text` to a private temp file named like `file_name` (the editor picks its syntax by the
/// extension), run `$VISUAL`/`$EDITOR` (default `vi`) on it, and return what was saved. The file
/// is removed on every path; `what` names the object in errors ("network 'x'").
pub fn edit_text(store: &Store, file_name: &str, text: &str, what: &str) -> anyhow::Result<String> {
    let dir =
        store.paths.run.join("tmp").join(format!("edit-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file_name);
    let result = (|| {
        std::fs::write(&path, text)?;
        let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
        let status = std::process::Command::new(&editor)
            .arg(&path)
            .status()
            .with_context(|| format!("cannot run editor {editor}"))?;
        if !status.success() {
            anyhow::bail!("editor {editor} failed ({status}); {what} unchanged");
        }
        Ok(crate::limits::read_definition(&path)?)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
