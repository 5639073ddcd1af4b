//! A crate's module graph read from its source, held against the layers its `ARCHITECTURE.md`
//! names, and checked for cycles. The model is rust-analyzer's tidy tests: the architecture is
//! written down once, and a test fails, naming the file and the path, when the code leaves it.
//!
//! The graph is read from tokens, not by a compiler: it follows `mod` declarations from the
//! crate root (honouring `#[path]`), and takes as a use of a module every path that starts with
//! `crate::`, `super::`, `self::` or the name of a child module, inside `use` trees and in code
//! alike (a `crate::x::f()` call counts as much as a `use`). Paths through the root's
//! re-exports (`crate::Client`) count as uses of the module the root takes them from, and a glob
//! (`use super::*`) as a use of its module. Test code (`#[cfg(test)]` items, fields and modules,
//! `#![cfg(test)]` files) is left out: tests may use anything.
//!
//! What it cannot see: code that macros write, and `mod` declarations inside inline modules.
//! Neither occurs in the crates it checks; a path it cannot place (`crate::name` of something
//! defined in the root) is passed over.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// One source file: its module path from the crate root (empty for the root).
#[derive(Debug, Clone)]
struct Module {
    path: Vec<String>,
    file: PathBuf,
    /// Child modules declared in it (not test ones), by name.
    children: BTreeSet<String>,
}

/// A module's use of another: the path as written, and where it leads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    from: usize,
    to: usize,
    written: String,
}

/// The modules of one crate and the uses between them.
#[derive(Debug)]
pub struct Graph {
    root: PathBuf,
    modules: Vec<Module>,
    uses: BTreeSet<Use>,
}

/// The layers of a crate, bottom first: each a name and its top-level modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers(Vec<(String, Vec<String>)>);

impl Layers {
    /// The table under the heading that contains `heading` in `markdown`: rows of
    /// `| <n>. <name> | `module`, `module` | ... |`, bottom layer first.
    pub fn from_markdown(markdown: &str, heading: &str) -> Result<Layers, String> {
        let mut lines = markdown.lines();
        lines
            .by_ref()
            .find(|line| line.starts_with('#') && line.contains(heading))
            .ok_or_else(|| format!("no heading with `{heading}`"))?;
        let mut layers = Vec::new();
        for line in lines {
            if line.starts_with('#') {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // `| 1. model | `a`, `b` | ... |` splits into ["", "1. model", "`a`, `b`", ...].
            let Some((number, name)) = cells.get(1).and_then(|cell| cell.split_once(". ")) else {
                continue;
            };
            if number.parse::<usize>() != Ok(layers.len() + 1) {
                continue;
            }
            let modules = cells
                .get(2)
                .map(|cell| {
                    cell.split(',')
                        .map(|module| module.trim().trim_matches('`').to_owned())
                        .filter(|module| !module.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            layers.push((name.to_owned(), modules));
        }
        if layers.is_empty() {
            return Err(format!(
                "no rows like `| 1. name | `module`, ... |` under the heading with `{heading}`"
            ));
        }
        Ok(Layers(layers))
    }

    /// The layer (from 1) and its name of a top-level module (`lib` or `main` for the root).
    fn of(&self, module: &str) -> Option<(usize, &str)> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, (_, modules))| modules.iter().any(|m| m == module))
            .map(|(index, (name, _))| (index + 1, name.as_str()))
    }
}

impl Graph {
    /// Read the crate whose root file is `root` (`src/lib.rs` or `src/main.rs`).
    pub fn read(root: &Path) -> Result<Graph, String> {
        let mut modules = Vec::new();
        let mut bodies = Vec::new();
        let mut pending = vec![(Vec::new(), root.to_path_buf(), true)];
        while let Some((path, file, owns_dir)) = pending.pop() {
            let text = std::fs::read_to_string(&file)
                .map_err(|err| format!("cannot read {}: {err}", file.display()))?;
            let tokens = TokenStream::from_str(&text)
                .map_err(|err| format!("cannot lex {}: {err}", file.display()))?;
            let tokens: Vec<TokenTree> = without_tests(tokens);
            let dir = if owns_dir {
                file.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                file.with_extension("")
            };
            let mut children = BTreeSet::new();
            for (name, path_attr) in declared_modules(&tokens) {
                let path_attr_given = path_attr.is_some();
                let child_file = match path_attr {
                    Some(relative) => file
                        .parent()
                        .map(|parent| parent.join(&relative))
                        .unwrap_or_else(|| PathBuf::from(&relative)),
                    None => {
                        let flat = dir.join(format!("{name}.rs"));
                        if flat.exists() {
                            flat
                        } else {
                            dir.join(&name).join("mod.rs")
                        }
                    }
                };
                // A file named by `#[path]` keeps its children beside it, as a `mod.rs` does.
                let owns = path_attr_given || child_file.file_name().is_some_and(|f| f == "mod.rs");
                let mut child_path = path.clone();
                child_path.push(name.clone());
                children.insert(name);
                pending.push((child_path, child_file, owns));
            }
            modules.push(Module {
                path,
                file,
                children,
            });
            bodies.push(tokens);
        }
        let mut graph = Graph {
            // Files are named from the crate's directory: `src/task.rs`.
            root: root
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            modules,
            uses: BTreeSet::new(),
        };
        let exports = graph.root_exports(&bodies);
        for (from, tokens) in bodies.iter().enumerate() {
            let mut paths = Vec::new();
            collect_paths(tokens, &mut paths);
            for written in paths {
                if let Some(to) = graph.resolve(from, &written, &exports)
                    && to != from
                {
                    graph.uses.insert(Use {
                        from,
                        to,
                        written: written.join("::"),
                    });
                }
            }
        }
        Ok(graph)
    }

    /// Names the root re-exports (`pub use crate::x::{A, B}`), and the module each comes from.
    fn root_exports(&self, bodies: &[Vec<TokenTree>]) -> BTreeMap<String, usize> {
        let mut exports = BTreeMap::new();
        let Some(root) = self.modules.iter().position(|m| m.path.is_empty()) else {
            return exports;
        };
        let mut paths = Vec::new();
        collect_paths(&bodies[root], &mut paths);
        for path in paths.into_iter().filter(|path| path[0] == "crate") {
            if let (Some(last), Some(module)) = (path.last(), self.module_of(&path[1..])) {
                exports.entry(last.clone()).or_insert(module);
            }
        }
        exports
    }

    /// The module with the longest path that `absolute` (from the root) starts with, if it is
    /// not the root.
    fn module_of(&self, absolute: &[String]) -> Option<usize> {
        (1..=absolute.len())
            .rev()
            .find_map(|len| self.modules.iter().position(|m| m.path == absolute[..len]))
    }

    /// Where a path written in module `from` leads.
    fn resolve(
        &self,
        from: usize,
        written: &[String],
        exports: &BTreeMap<String, usize>,
    ) -> Option<usize> {
        let here = &self.modules[from];
        let mut absolute: Vec<String> = match written.first()?.as_str() {
            "crate" => Vec::new(),
            "self" => here.path.clone(),
            "super" => here.path.clone(),
            child if here.children.contains(child) => here.path.clone(),
            _ => return None,
        };
        let mut rest = match written[0].as_str() {
            "crate" | "self" => &written[1..],
            _ => written,
        };
        while rest.first().is_some_and(|segment| segment == "super") {
            absolute.pop();
            rest = &rest[1..];
        }
        absolute.extend(rest.iter().cloned());
        match self.module_of(&absolute) {
            Some(module) => Some(module),
            // `crate::Name`: through the root's re-exports.
            None => exports.get(absolute.first()?).copied(),
        }
    }

    fn name(&self, module: usize) -> String {
        let file = &self.modules[module].file;
        file.strip_prefix(&self.root)
            .unwrap_or(file)
            .display()
            .to_string()
    }

    fn top(&self, module: usize, root_name: &str) -> String {
        self.modules[module]
            .path
            .first()
            .cloned()
            .unwrap_or_else(|| root_name.to_owned())
    }

    /// Every use of a module in a higher layer than the user's, and every top-level module the
    /// table does not place; `root_name` is the root's name in the table (`lib` or `main`).
    pub fn layer_violations(&self, layers: &Layers, root_name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let tops: BTreeSet<String> = (0..self.modules.len())
            .map(|m| self.top(m, root_name))
            .collect();
        for top in &tops {
            if layers.of(top).is_none() {
                problems.push(format!(
                    "module `{top}` is in no layer: add it to the table in ARCHITECTURE.md"
                ));
            }
        }
        for found in &self.uses {
            let (from, to) = (
                self.top(found.from, root_name),
                self.top(found.to, root_name),
            );
            let (Some((from_layer, from_name)), Some((to_layer, to_name))) =
                (layers.of(&from), layers.of(&to))
            else {
                continue;
            };
            if to_layer > from_layer {
                problems.push(format!(
                    "{} uses `{}`: `{to}` is in layer {to_layer} ({to_name}), above `{from}` in \
                     layer {from_layer} ({from_name})",
                    self.name(found.from),
                    found.written
                ));
            }
        }
        problems
    }

    /// Every cycle of files (each strongly connected group of two or more), with the uses that
    /// tie it.
    pub fn cycles(&self) -> Vec<String> {
        let mut out = Vec::new();
        for group in strongly_connected(self.modules.len(), &self.uses) {
            let members: BTreeSet<usize> = group.iter().copied().collect();
            let mut text = format!(
                "a cycle of {} files: {}",
                members.len(),
                members
                    .iter()
                    .map(|&m| self.name(m))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut ties: BTreeMap<(usize, usize), Vec<&str>> = BTreeMap::new();
            for tie in self
                .uses
                .iter()
                .filter(|u| members.contains(&u.from) && members.contains(&u.to))
            {
                ties.entry((tie.from, tie.to))
                    .or_default()
                    .push(&tie.written);
            }
            for ((from, to), written) in ties {
                let _ = write!(
                    text,
                    "\n  {} -> {}: {}",
                    self.name(from),
                    self.name(to),
                    written.join(", ")
                );
            }
            out.push(text);
        }
        out
    }
}

/// The tokens without test modules (`#[cfg(test)] mod x { .. }` or `mod x;`) and test
/// functions: what tests use is not part of the architecture.
fn without_tests(tokens: TokenStream) -> Vec<TokenTree> {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    // `#![cfg(test)]`: the whole module is a test.
    if tokens.windows(3).any(|window| {
        matches!(&window[0], TokenTree::Punct(p) if p.as_char() == '#')
            && matches!(&window[1], TokenTree::Punct(p) if p.as_char() == '!')
            && attribute_is_cfg_test(&window[2])
    }) {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if is_attribute(&tokens, i) && attribute_is_cfg_test(&tokens[i + 1]) {
            // Skip the attribute and the item it guards: up to its `;` or its body, or (for a
            // field, a variant or an argument) up to the `,` that ends it.
            i += 2;
            while i < tokens.len() {
                match &tokens[i] {
                    TokenTree::Punct(p) if p.as_char() == ';' || p.as_char() == ',' => {
                        i += 1;
                        break;
                    }
                    TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                        i += 1;
                        break;
                    }
                    _ => i += 1,
                }
            }
            continue;
        }
        out.push(match &tokens[i] {
            TokenTree::Group(group) => {
                let inner: TokenStream = without_tests(group.stream()).into_iter().collect();
                let mut copy = proc_macro2::Group::new(group.delimiter(), inner);
                copy.set_span(group.span());
                TokenTree::Group(copy)
            }
            other => other.clone(),
        });
        i += 1;
    }
    out
}

fn is_attribute(tokens: &[TokenTree], i: usize) -> bool {
    matches!(&tokens[i], TokenTree::Punct(p) if p.as_char() == '#')
        && matches!(tokens.get(i + 1), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Bracket)
}

fn attribute_is_cfg_test(attribute: &TokenTree) -> bool {
    let text = attribute.to_string().replace(' ', "");
    text == "[cfg(test)]"
}

/// `mod name;` declarations, each with its `#[path = ".."]` if it has one.
fn declared_modules(tokens: &[TokenTree]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut path_attr = None;
    let mut i = 0;
    while i < tokens.len() {
        if is_attribute(tokens, i) {
            if let TokenTree::Group(group) = &tokens[i + 1] {
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                if let (Some(TokenTree::Ident(name)), Some(TokenTree::Literal(value))) =
                    (inner.first(), inner.get(2))
                    && name == "path"
                {
                    path_attr = Some(value.to_string().trim_matches('"').to_owned());
                }
            }
            i += 2;
            continue;
        }
        if let (
            TokenTree::Ident(keyword),
            Some(TokenTree::Ident(name)),
            Some(TokenTree::Punct(end)),
        ) = (&tokens[i], tokens.get(i + 1), tokens.get(i + 2))
            && keyword == "mod"
            && end.as_char() == ';'
        {
            out.push((name.to_string(), path_attr.take()));
            i += 3;
            continue;
        }
        if matches!(&tokens[i], TokenTree::Punct(p) if p.as_char() == ';')
            || matches!(&tokens[i], TokenTree::Group(g) if g.delimiter() == Delimiter::Brace)
        {
            path_attr = None;
        }
        i += 1;
    }
    out
}

/// Every path of two or more segments in the tokens (`a::b::c`), with `use` groups
/// (`a::{b, c::d}`) expanded into one path each, at any depth of nesting.
fn collect_paths(tokens: &[TokenTree], out: &mut Vec<Vec<String>>) {
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Ident(first) if !preceded_by_path_separator(tokens, i) => {
                let (end, paths) = path_at(tokens, i, vec![first.to_string()]);
                if end > i + 1 {
                    out.extend(paths);
                    i = end;
                    continue;
                }
            }
            TokenTree::Group(group) => {
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                collect_paths(&inner, out);
            }
            _ => {}
        }
        i += 1;
    }
}

/// Whether the token at `i` follows `::` (it is inside a path already read) or `$` (a macro's
/// `$crate`).
fn preceded_by_path_separator(tokens: &[TokenTree], i: usize) -> bool {
    let punct = |at: usize, c: char| matches!(&tokens[at], TokenTree::Punct(p) if p.as_char() == c);
    (i >= 1 && punct(i - 1, '$')) || (i >= 2 && punct(i - 1, ':') && punct(i - 2, ':'))
}

/// The path that starts at `i` with `prefix` already read: where it ends, and the full paths
/// it stands for (several for a `use` group). A path of one segment stands for none.
fn path_at(tokens: &[TokenTree], i: usize, prefix: Vec<String>) -> (usize, Vec<Vec<String>>) {
    let separator = |at: usize| {
        matches!(tokens.get(at), Some(TokenTree::Punct(p)) if p.as_char() == ':')
            && matches!(tokens.get(at + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':')
    };
    let mut path = prefix;
    let mut at = i + 1;
    while separator(at) {
        match tokens.get(at + 2) {
            Some(TokenTree::Ident(segment)) => {
                path.push(segment.to_string());
                at += 3;
            }
            Some(TokenTree::Group(group)) if group.delimiter() == Delimiter::Brace => {
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                let mut paths = Vec::new();
                for item in inner.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
                {
                    match item.first() {
                        Some(TokenTree::Ident(first)) if first == "self" => {
                            paths.push(path.clone())
                        }
                        Some(TokenTree::Punct(p)) if p.as_char() == '*' => paths.push(path.clone()),
                        Some(TokenTree::Ident(first)) => {
                            let mut nested = path.clone();
                            nested.push(first.to_string());
                            let (_, found) = path_at(item, 0, nested.clone());
                            if found.is_empty() {
                                paths.push(nested);
                            } else {
                                paths.extend(found);
                            }
                        }
                        _ => {}
                    }
                }
                return (at + 3, paths);
            }
            // `a::*`: a use of the module `a` itself, whatever its one segment.
            Some(TokenTree::Punct(p)) if p.as_char() == '*' => return (at + 3, vec![path]),
            // `a::<T>`: the path so far.
            _ => break,
        }
    }
    if path.len() < 2 {
        return (at, Vec::new());
    }
    // `use a::B as C`: also the name it goes by, so that the root's renamed re-exports resolve.
    if let (Some(TokenTree::Ident(word)), Some(TokenTree::Ident(alias))) =
        (tokens.get(at), tokens.get(at + 1))
        && word == "as"
    {
        let mut renamed = path.clone();
        *renamed.last_mut().expect("two segments or more") = alias.to_string();
        return (at + 2, vec![path, renamed]);
    }
    (at, vec![path])
}

/// Tarjan's strongly connected components of two or more nodes.
fn strongly_connected(nodes: usize, uses: &BTreeSet<Use>) -> Vec<Vec<usize>> {
    let mut edges = vec![Vec::new(); nodes];
    for found in uses {
        edges[found.from].push(found.to);
    }
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        groups: Vec<Vec<usize>>,
    }
    fn visit(node: usize, edges: &[Vec<usize>], s: &mut State) {
        s.index[node] = Some(s.next);
        s.low[node] = s.next;
        s.next += 1;
        s.stack.push(node);
        s.on_stack[node] = true;
        for &next in &edges[node] {
            match s.index[next] {
                None => {
                    visit(next, edges, s);
                    s.low[node] = s.low[node].min(s.low[next]);
                }
                Some(index) if s.on_stack[next] => s.low[node] = s.low[node].min(index),
                Some(_) => {}
            }
        }
        if Some(s.low[node]) == s.index[node] {
            let mut group = Vec::new();
            while let Some(member) = s.stack.pop() {
                s.on_stack[member] = false;
                group.push(member);
                if member == node {
                    break;
                }
            }
            if group.len() > 1 {
                s.groups.push(group);
            }
        }
    }
    let mut state = State {
        index: vec![None; nodes],
        low: vec![0; nodes],
        on_stack: vec![false; nodes],
        stack: Vec::new(),
        next: 0,
        groups: Vec::new(),
    };
    for node in 0..nodes {
        if state.index[node].is_none() {
            visit(node, &edges, &mut state);
        }
    }
    state.groups
}

/// Panic with every layer violation and cycle of the crate rooted at `root`, held against the
/// layers under the heading with `heading` in the document `architecture`.
pub fn assert_layered(root: &Path, root_name: &str, architecture: &Path, heading: &str) {
    let graph = Graph::read(root).unwrap_or_else(|err| panic!("{err}"));
    let markdown = std::fs::read_to_string(architecture)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", architecture.display()));
    let layers = Layers::from_markdown(&markdown, heading)
        .unwrap_or_else(|err| panic!("{}: {err}", architecture.display()));
    let mut problems = graph.layer_violations(&layers, root_name);
    problems.extend(graph.cycles());
    assert!(
        problems.is_empty(),
        "the modules of {} leave the layers of {}:\n{}",
        root.display(),
        architecture.display(),
        problems.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate of `files` (path, text) in a fresh directory, read; the directory goes with it.
    fn graph(files: &[(&str, &str)]) -> (Graph, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        for (path, text) in files {
            let path = dir.path().join("src").join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        (Graph::read(&dir.path().join("src/lib.rs")).unwrap(), dir)
    }

    mod tempdir {
        /// A directory under the system's temporary one, removed on drop.
        pub(super) struct Dir(std::path::PathBuf);

        impl Dir {
            pub(super) fn new() -> Self {
                let path = std::env::temp_dir().join(format!(
                    "psw-imports-{}-{:016x}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }

            pub(super) fn path(&self) -> &std::path::Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const LAYERS: &str = "\
# Architecture
## Layers of `demo`
| layer | modules |
|---|---|
| 1. model | `low`, `leaf` |
| 2. services | `high` |
| 3. surface | `lib` |
## Something else
| 1. not | `this` |
";

    fn violations(files: &[(&str, &str)]) -> Vec<String> {
        let (graph, _dir) = graph(files);
        let layers = Layers::from_markdown(LAYERS, "Layers of `demo`").unwrap();
        graph.layer_violations(&layers, "lib")
    }

    #[test]
    fn the_table_is_read_bottom_first() {
        let layers = Layers::from_markdown(LAYERS, "Layers of `demo`").unwrap();
        assert_eq!(layers.of("leaf"), Some((1, "model")));
        assert_eq!(layers.of("high"), Some((2, "services")));
        assert_eq!(layers.of("this"), None, "another table");
        assert!(Layers::from_markdown(LAYERS, "Layers of `other`").is_err());
    }

    #[test]
    fn an_upward_use_is_named_with_its_file_and_path() {
        let files = [
            ("lib.rs", "mod low; mod high; pub use crate::high::Service;"),
            (
                "low.rs",
                "pub struct Model; fn f() { crate::high::serve(); }",
            ),
            (
                "high.rs",
                "use crate::low::Model; pub struct Service; pub fn serve() {}",
            ),
        ];
        assert_eq!(
            violations(&files),
            [
                "src/low.rs uses `crate::high::serve`: `high` is in layer 2 (services), above `low` \
              in layer 1 (model)"
            ]
        );
    }

    #[test]
    fn uses_through_root_re_exports_groups_and_children_are_followed() {
        let files = [
            ("lib.rs", "mod low; mod high; pub use crate::high::Service;"),
            (
                "low/mod.rs",
                "mod part; use self::part::X; use crate::{Service as S};",
            ),
            ("low/part.rs", "pub struct X;"),
            ("high.rs", "pub struct Service;"),
        ];
        assert_eq!(
            violations(&files),
            [
                "src/low/mod.rs uses `crate::Service`: `high` is in layer 2 (services), above `low` in \
              layer 1 (model)"
            ]
        );
    }

    #[test]
    fn tests_and_text_are_not_uses() {
        let files = [
            ("lib.rs", "mod low; mod high;"),
            (
                "low.rs",
                "/// See [`crate::high::Service`].\nfn f() { let _ = \"crate::high::x\"; }\n\
                 #[cfg(test)]\nmod tests { use crate::high::Service; }",
            ),
            ("high.rs", "pub struct Service;"),
        ];
        assert_eq!(violations(&files), Vec::<String>::new());
    }

    #[test]
    fn globs_renames_and_test_fields_are_read_as_rustc_does() {
        let files = [
            (
                "lib.rs",
                "mod low; mod high; pub use crate::high::Service as Renamed;",
            ),
            (
                "low.rs",
                "use crate::high::*;\n\
                 struct S { #[cfg(test)] t: crate::high::T, u: crate::Renamed }",
            ),
            ("high.rs", "pub struct Service;"),
        ];
        assert_eq!(
            violations(&files),
            [
                "src/low.rs uses `crate::Renamed`: `high` is in layer 2 (services), above `low` \
                 in layer 1 (model)",
                "src/low.rs uses `crate::high`: `high` is in layer 2 (services), above `low` in \
                 layer 1 (model)",
            ]
        );
    }

    #[test]
    fn a_module_without_a_layer_is_named() {
        let files = [("lib.rs", "mod stray;"), ("stray.rs", "")];
        assert_eq!(
            violations(&files),
            ["module `stray` is in no layer: add it to the table in ARCHITECTURE.md"]
        );
    }

    #[test]
    fn cycles_name_their_files_and_ties() {
        let files = [
            ("lib.rs", "mod low;"),
            ("low/mod.rs", "mod a; use a::f; pub fn g() {}"),
            ("low/a.rs", "pub fn f() { super::g() }"),
        ];
        let (graph, _dir) = graph(&files);
        assert_eq!(
            graph.cycles(),
            [
                "a cycle of 2 files: src/low/mod.rs, src/low/a.rs\n  src/low/mod.rs -> \
              src/low/a.rs: a::f\n  src/low/a.rs -> src/low/mod.rs: super::g"
            ]
        );
        let files = [
            ("lib.rs", "mod low;"),
            ("low/mod.rs", "mod a; mod b; use a::f;"),
            ("low/a.rs", "pub fn f() { super::b::g() }"),
            ("low/b.rs", "pub fn g() {}"),
        ];
        assert_eq!(graph_cycles(&files), Vec::<String>::new());
    }

    fn graph_cycles(files: &[(&str, &str)]) -> Vec<String> {
        graph(files).0.cycles()
    }

    #[test]
    fn psw_tasks_keeps_its_layers_and_has_no_cycles() {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_layered(
            &crate_dir.join("src/lib.rs"),
            "lib",
            &crate_dir.join("../ARCHITECTURE.md"),
            "Layers of `psw-tasks`",
        );
    }
}
