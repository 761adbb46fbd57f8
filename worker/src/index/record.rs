//! The two line formats of an index (`files.jsonl.zst`, `symbols.jsonl.zst`) and their
//! vocabularies: [`Language`], [`Reason`], [`Kind`].

use serde::{Deserialize, Serialize};

/// A language the indexer recognises by file name. Only [`Language::parser`] ones are parsed;
/// the others are listed with `reason: "unsupported_language"` but keep their name for counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Rust,
    Python,
    Go,
    JavaScript,
    TypeScript,
    Tsx,
    Java,
    C,
    Cpp,
    CSharp,
    Kotlin,
    Scala,
    Swift,
    Ruby,
    Php,
    Shell,
    Sql,
    Html,
    Css,
    Markdown,
    Json,
    Yaml,
    Toml,
}

impl Language {
    /// The name used in `files.jsonl` and as the key of [`super::Output::counts`].
    pub fn name(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::Go => "go",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Tsx => "tsx",
            Language::Java => "java",
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::CSharp => "csharp",
            Language::Kotlin => "kotlin",
            Language::Scala => "scala",
            Language::Swift => "swift",
            Language::Ruby => "ruby",
            Language::Php => "php",
            Language::Shell => "shell",
            Language::Sql => "sql",
            Language::Html => "html",
            Language::Css => "css",
            Language::Markdown => "markdown",
            Language::Json => "json",
            Language::Yaml => "yaml",
            Language::Toml => "toml",
        }
    }

    /// Whether this indexer has a grammar (and symbol rules) for the language.
    pub fn parsed(self) -> bool {
        matches!(
            self,
            Language::Rust
                | Language::Python
                | Language::Go
                | Language::JavaScript
                | Language::TypeScript
                | Language::Tsx
                | Language::Java
        )
    }
}

/// Why a listed file was not parsed (`files.jsonl` `reason`, absent when `parsed` is true).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Binary,
    Generated,
    Vendored,
    TooLarge,
    Symlink,
    Submodule,
    UnsupportedLanguage,
    ParseError,
}

/// The kind of a definition (`symbols.jsonl` `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Function,
    Method,
    Type,
    Trait,
    Interface,
    Class,
    Constant,
    Module,
}

/// One line of `files.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub path: String,
    pub language: Option<Language>,
    pub size: u64,
    pub blob: String,
    pub lines: Option<u64>,
    pub parsed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// One line of `symbols.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolRecord {
    pub path: String,
    pub name: String,
    pub kind: Kind,
    pub line: u32,
    pub column: u32,
    pub enclosing: Option<String>,
}

/// A definition found in one file, before the path is attached.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Symbol {
    pub name: String,
    pub kind: Kind,
    /// 1-based line of the name token.
    pub line: u32,
    /// 1-based column of the name token, in bytes.
    pub column: u32,
    pub enclosing: Option<String>,
}

/// [`SymbolRecord`] borrowing its strings, for writing without copies.
#[derive(Serialize)]
pub(crate) struct SymbolLine<'a> {
    pub path: &'a str,
    pub name: &'a str,
    pub kind: Kind,
    pub line: u32,
    pub column: u32,
    pub enclosing: Option<&'a str>,
}
