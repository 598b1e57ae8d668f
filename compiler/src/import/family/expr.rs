//! The small expression language of family files.
//!
//! A string value in a family file that starts with `=` is an expression
//! over the config's fields (declared in `[fields]`) and the family's
//! derived values (`[let]`):
//!
//! ```text
//! "=hidden_size // num_attention_heads"
//! "=if n_inner == null then 4 * n_embd else n_inner"
//! "=[i % 2 == 0 for i in range(num_hidden_layers)]"
//! "=rope(head_dim, max_position_embeddings)"
//! ```
//!
//! Values are null, booleans, integers (64-bit, overflow is an error),
//! floats, strings (`'…'` or `"…"`), lists (`[a, b]`, comprehensions
//! `[e for x in list]`) and tables (`{ key = value }`, `t.key`). Operators,
//! loosest first: `if c then a else b`; `or`; `and`; `not`; comparisons
//! (`== != < <= > >=`, which never fail: `null == 0` is false); `+ -` (also
//! list and string concatenation); `* / // %` (`/` is float division,
//! `//` and `%` integer ones); unary `-`; then calls, `.field` and `[index]`.
//! `and` / `or` / `if` evaluate lazily, so `heads > 0 and d % heads == 0`
//! never divides by zero. Functions are supplied by the caller ([`Env`]).

use std::collections::BTreeMap;
use std::fmt;

/// A value an expression computes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Val>),
    Table(BTreeMap<String, Val>),
}

impl Val {
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Str(_) => "a string",
            Val::List(_) => "a list",
            Val::Table(_) => "a table",
        }
    }

    /// From a JSON value (config fields).
    pub fn from_json(v: &serde_json::Value) -> Val {
        use serde_json::Value as J;
        match v {
            J::Null => Val::Null,
            J::Bool(b) => Val::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Val::Str(s.clone()),
            J::Array(a) => Val::List(a.iter().map(Val::from_json).collect()),
            J::Object(m) => Val::Table(
                m.iter()
                    .map(|(k, v)| (k.clone(), Val::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// From a TOML value (literals in a family file).
    pub fn from_toml(v: &toml::Value) -> Val {
        use toml::Value as T;
        match v {
            T::String(s) => Val::Str(s.clone()),
            T::Integer(i) => Val::Int(*i),
            T::Float(f) => Val::Float(*f),
            T::Boolean(b) => Val::Bool(*b),
            T::Datetime(d) => Val::Str(d.to_string()),
            T::Array(a) => Val::List(a.iter().map(Val::from_toml).collect()),
            T::Table(t) => Val::Table(
                t.iter()
                    .map(|(k, v)| (k.clone(), Val::from_toml(v)))
                    .collect(),
            ),
        }
    }

    /// To TOML; `None` for null (the key is left out). Nulls inside lists
    /// are an error (TOML has no null).
    pub fn to_toml(&self) -> Result<Option<toml::Value>, String> {
        Ok(Some(match self {
            Val::Null => return Ok(None),
            Val::Bool(b) => toml::Value::Boolean(*b),
            Val::Int(i) => toml::Value::Integer(*i),
            Val::Float(f) => toml::Value::Float(*f),
            Val::Str(s) => toml::Value::String(s.clone()),
            Val::List(l) => toml::Value::Array(
                l.iter()
                    .map(|v| v.to_toml()?.ok_or_else(|| "a list holds null".to_string()))
                    .collect::<Result<_, _>>()?,
            ),
            Val::Table(t) => {
                let mut out = toml::Table::new();
                for (k, v) in t {
                    if let Some(v) = v.to_toml()? {
                        out.insert(k.clone(), v);
                    }
                }
                toml::Value::Table(out)
            }
        }))
    }

    pub fn truthy(&self) -> Result<bool, String> {
        match self {
            Val::Bool(b) => Ok(*b),
            other => Err(format!(
                "a condition must be true or false, found {}",
                other.type_name()
            )),
        }
    }
}

impl fmt::Display for Val {
    /// Strings bare, floats in their shortest round-tripping form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Null => write!(f, "null"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Int(i) => write!(f, "{i}"),
            Val::Float(x) => write!(f, "{x:?}"),
            Val::Str(s) => write!(f, "{s}"),
            Val::List(l) => {
                write!(f, "[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", v.quoted())?;
                }
                write!(f, "]")
            }
            Val::Table(t) => {
                write!(f, "{{")?;
                for (i, (k, v)) in t.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k} = {}", v.quoted())?;
                }
                write!(f, "}}")
            }
        }
    }
}

impl Val {
    /// Like `Display`, but strings in double quotes.
    pub fn quoted(&self) -> String {
        match self {
            Val::Str(s) => format!("{s:?}"),
            other => other.to_string(),
        }
    }
}

/// What an expression may look up and call.
pub(crate) trait Env {
    /// The error type (the importer's: it names the config field or the family file).
    type Error;
    /// A value by name (a field, a derived value or a comprehension variable).
    fn name(&mut self, name: &str) -> Result<Val, Self::Error>;
    /// A function call.
    fn call(&mut self, name: &str, args: Vec<Val>) -> Result<Val, Self::Error>;
    /// An error in the expression itself (a type mismatch, division by zero).
    fn fail(&mut self, message: String) -> Self::Error;
    /// Bind a comprehension variable for the duration of `body`.
    fn push_local(&mut self, name: &str, v: Val);
    fn pop_local(&mut self);
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Bin {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Rem,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Lit(Val),
    Name(String),
    Call(String, Vec<Expr>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Bin(Bin, Box<Expr>, Box<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    /// `[body for var in iter]`, with an optional `if filter`.
    Comp(Box<Expr>, String, Box<Expr>, Option<Box<Expr>>),
    Table(Vec<(String, Expr)>),
    Field(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Sym(&'static str),
}

const SYMS: &[&str] = &[
    "==", "!=", "<=", ">=", "//", "<", ">", "+", "-", "*", "/", "%", "(", ")", "[", "]", "{", "}",
    ",", ".", "=",
];

const KEYWORDS: &[&str] = &[
    "and", "or", "not", "if", "then", "else", "for", "in", "true", "false", "null",
];

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[s..i].to_string()));
        } else if c.is_ascii_digit() {
            let s = i;
            let mut float = false;
            while i < b.len() {
                let d = b[i];
                if d.is_ascii_digit() || d == b'_' {
                    i += 1;
                } else if d == b'.' && !float && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
                    float = true;
                    i += 1;
                } else if (d == b'e' || d == b'E') && i + 1 < b.len() {
                    float = true;
                    i += 1;
                    if b[i] == b'-' || b[i] == b'+' {
                        i += 1;
                    }
                } else {
                    break;
                }
            }
            let text = src[s..i].replace('_', "");
            if float {
                let x: f64 = text
                    .parse()
                    .map_err(|_| format!("`{text}` is not a number"))?;
                out.push(Tok::Float(x));
            } else {
                let x: i64 = text
                    .parse()
                    .map_err(|_| format!("`{text}` is not a 64-bit integer"))?;
                out.push(Tok::Int(x));
            }
        } else if c == b'\'' || c == b'"' {
            let q = c;
            let s = i + 1;
            i += 1;
            while i < b.len() && b[i] != q {
                i += 1;
            }
            if i >= b.len() {
                return Err("a string is not closed".into());
            }
            out.push(Tok::Str(src[s..i].to_string()));
            i += 1;
        } else {
            let rest = &src[i..];
            let Some(sym) = SYMS.iter().find(|s| rest.starts_with(**s)) else {
                return Err(format!(
                    "unexpected character `{}`",
                    rest.chars().next().unwrap_or(' ')
                ));
            };
            out.push(Tok::Sym(sym));
            i += sym.len();
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

/// Deepest nesting accepted (a family file is small; this bounds recursion).
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == s)
    }

    fn is_kw(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(x)) if x == k)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if self.is_sym(s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_kw(&mut self, k: &str) -> bool {
        if self.is_kw(k) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, s: &str) -> Result<(), String> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(format!("expected `{s}` {}", self.here()))
        }
    }

    fn expect_kw(&mut self, k: &str) -> Result<(), String> {
        if self.eat_kw(k) {
            Ok(())
        } else {
            Err(format!("expected `{k}` {}", self.here()))
        }
    }

    fn here(&self) -> String {
        match self.peek() {
            None => "at the end".into(),
            Some(Tok::Ident(s)) => format!("at `{s}`"),
            Some(Tok::Int(i)) => format!("at `{i}`"),
            Some(Tok::Float(x)) => format!("at `{x}`"),
            Some(Tok::Str(s)) => format!("at '{s}'"),
            Some(Tok::Sym(s)) => format!("at `{s}`"),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Ident(s)) if !KEYWORDS.contains(&s.as_str()) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(format!("expected a name {}", self.here())),
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("the expression nests too deeply".into());
        }
        let e = if self.eat_kw("if") {
            let c = self.expr()?;
            self.expect_kw("then")?;
            let a = self.expr()?;
            self.expect_kw("else")?;
            let b = self.expr()?;
            Expr::If(Box::new(c), Box::new(a), Box::new(b))
        } else {
            self.or()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.eat_kw("or") {
            let r = self.and()?;
            l = Expr::Bin(Bin::Or, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.not()?;
        while self.eat_kw("and") {
            let r = self.not()?;
            l = Expr::Bin(Bin::And, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.eat_kw("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr, String> {
        let l = self.add()?;
        let op = [
            ("==", Bin::Eq),
            ("!=", Bin::Ne),
            ("<=", Bin::Le),
            (">=", Bin::Ge),
            ("<", Bin::Lt),
            (">", Bin::Gt),
        ]
        .into_iter()
        .find(|(s, _)| self.is_sym(s));
        match op {
            Some((s, op)) => {
                self.expect_sym(s)?;
                let r = self.add()?;
                Ok(Expr::Bin(op, Box::new(l), Box::new(r)))
            }
            None => Ok(l),
        }
    }

    fn add(&mut self) -> Result<Expr, String> {
        let mut l = self.mul()?;
        loop {
            let op = if self.eat_sym("+") {
                Bin::Add
            } else if self.eat_sym("-") {
                Bin::Sub
            } else {
                return Ok(l);
            };
            let r = self.mul()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
    }

    fn mul(&mut self) -> Result<Expr, String> {
        let mut l = self.unary()?;
        loop {
            let op = if self.eat_sym("*") {
                Bin::Mul
            } else if self.eat_sym("//") {
                Bin::IntDiv
            } else if self.eat_sym("/") {
                Bin::Div
            } else if self.eat_sym("%") {
                Bin::Rem
            } else {
                return Ok(l);
            };
            let r = self.unary()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat_sym("-") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err("the expression nests too deeply".into());
            }
            let e = Expr::Neg(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(e);
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat_sym(".") {
                let f = self.ident()?;
                e = Expr::Field(Box::new(e), f);
            } else if self.eat_sym("[") {
                let i = self.expr()?;
                self.expect_sym("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let Some(t) = self.peek().cloned() else {
            return Err("the expression ends early".into());
        };
        self.pos += 1;
        Ok(match t {
            Tok::Int(i) => Expr::Lit(Val::Int(i)),
            Tok::Float(x) => Expr::Lit(Val::Float(x)),
            Tok::Str(s) => Expr::Lit(Val::Str(s)),
            Tok::Ident(s) => match s.as_str() {
                "true" => Expr::Lit(Val::Bool(true)),
                "false" => Expr::Lit(Val::Bool(false)),
                "null" => Expr::Lit(Val::Null),
                k if KEYWORDS.contains(&k) => {
                    self.pos -= 1;
                    return Err(format!("unexpected `{k}`"));
                }
                _ if self.is_sym("(") => {
                    self.pos += 1;
                    let mut args = Vec::new();
                    if !self.eat_sym(")") {
                        loop {
                            args.push(self.expr()?);
                            if self.eat_sym(")") {
                                break;
                            }
                            self.expect_sym(",")?;
                        }
                    }
                    Expr::Call(s, args)
                }
                _ => Expr::Name(s),
            },
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.expect_sym(")")?;
                e
            }
            Tok::Sym("[") => {
                if self.eat_sym("]") {
                    return Ok(Expr::List(Vec::new()));
                }
                let first = self.expr()?;
                if self.eat_kw("for") {
                    let var = self.ident()?;
                    self.expect_kw("in")?;
                    let iter = self.expr()?;
                    let filter = if self.eat_kw("if") {
                        Some(Box::new(self.expr()?))
                    } else {
                        None
                    };
                    self.expect_sym("]")?;
                    return Ok(Expr::Comp(Box::new(first), var, Box::new(iter), filter));
                }
                let mut items = vec![first];
                while self.eat_sym(",") {
                    if self.is_sym("]") {
                        break;
                    }
                    items.push(self.expr()?);
                }
                self.expect_sym("]")?;
                Expr::List(items)
            }
            Tok::Sym("{") => {
                let mut items = Vec::new();
                if !self.eat_sym("}") {
                    loop {
                        let k = match self.peek().cloned() {
                            Some(Tok::Str(s)) => {
                                self.pos += 1;
                                s
                            }
                            _ => self.ident()?,
                        };
                        self.expect_sym("=")?;
                        items.push((k, self.expr()?));
                        if self.eat_sym("}") {
                            break;
                        }
                        self.expect_sym(",")?;
                    }
                }
                Expr::Table(items)
            }
            Tok::Sym(s) => {
                self.pos -= 1;
                return Err(format!("unexpected `{s}`"));
            }
        })
    }
}

/// Parse an expression (without its leading `=`).
pub(crate) fn parse(src: &str) -> Result<Expr, String> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected text {}", p.here()));
    }
    Ok(e)
}

/// The names an expression refers to (not comprehension variables), with
/// the functions it calls: for checking a family file up front.
pub(crate) fn references(e: &Expr, names: &mut Vec<String>, calls: &mut Vec<String>) {
    fn walk(e: &Expr, bound: &mut Vec<String>, names: &mut Vec<String>, calls: &mut Vec<String>) {
        match e {
            Expr::Lit(_) => {}
            Expr::Name(n) => {
                if !bound.contains(n) {
                    names.push(n.clone());
                }
            }
            Expr::Call(f, args) => {
                calls.push(f.clone());
                for a in args {
                    walk(a, bound, names, calls);
                }
            }
            Expr::Neg(a) | Expr::Not(a) | Expr::Field(a, _) => walk(a, bound, names, calls),
            Expr::Bin(_, a, b) | Expr::Index(a, b) => {
                walk(a, bound, names, calls);
                walk(b, bound, names, calls);
            }
            Expr::If(c, a, b) => {
                walk(c, bound, names, calls);
                walk(a, bound, names, calls);
                walk(b, bound, names, calls);
            }
            Expr::List(items) => {
                for a in items {
                    walk(a, bound, names, calls);
                }
            }
            Expr::Table(items) => {
                for (_, a) in items {
                    walk(a, bound, names, calls);
                }
            }
            Expr::Comp(body, var, iter, filter) => {
                walk(iter, bound, names, calls);
                bound.push(var.clone());
                walk(body, bound, names, calls);
                if let Some(f) = filter {
                    walk(f, bound, names, calls);
                }
                bound.pop();
            }
        }
    }
    walk(e, &mut Vec::new(), names, calls)
}

fn num(v: &Val) -> Option<f64> {
    match v {
        Val::Int(i) => Some(*i as f64),
        Val::Float(x) => Some(*x),
        _ => None,
    }
}

fn equal(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => num(a) == num(b),
        _ => a == b,
    }
}

/// Evaluate `e`.
pub(crate) fn eval<E: Env>(e: &Expr, env: &mut E) -> Result<Val, E::Error> {
    match e {
        Expr::Lit(v) => Ok(v.clone()),
        Expr::Name(n) => env.name(n),
        Expr::Call(f, args) => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, env)?);
            }
            env.call(f, vals)
        }
        Expr::Neg(a) => match eval(a, env)? {
            Val::Int(i) => i
                .checked_neg()
                .map(Val::Int)
                .ok_or_else(|| env.fail("integer overflow".into())),
            Val::Float(x) => Ok(Val::Float(-x)),
            v => Err(env.fail(format!("cannot negate {}", v.type_name()))),
        },
        Expr::Not(a) => {
            let v = eval(a, env)?;
            v.truthy().map(|b| Val::Bool(!b)).map_err(|m| env.fail(m))
        }
        Expr::If(c, a, b) => {
            let c = eval(c, env)?;
            if c.truthy().map_err(|m| env.fail(m))? {
                eval(a, env)
            } else {
                eval(b, env)
            }
        }
        Expr::Bin(Bin::And, a, b) => {
            let l = eval(a, env)?;
            if !l.truthy().map_err(|m| env.fail(m))? {
                return Ok(Val::Bool(false));
            }
            let r = eval(b, env)?;
            r.truthy().map(Val::Bool).map_err(|m| env.fail(m))
        }
        Expr::Bin(Bin::Or, a, b) => {
            let l = eval(a, env)?;
            if l.truthy().map_err(|m| env.fail(m))? {
                return Ok(Val::Bool(true));
            }
            let r = eval(b, env)?;
            r.truthy().map(Val::Bool).map_err(|m| env.fail(m))
        }
        Expr::Bin(op, a, b) => {
            let l = eval(a, env)?;
            let r = eval(b, env)?;
            binary(*op, l, r).map_err(|m| env.fail(m))
        }
        Expr::List(items) => {
            let mut out = Vec::with_capacity(items.len());
            for a in items {
                out.push(eval(a, env)?);
            }
            Ok(Val::List(out))
        }
        Expr::Comp(body, var, iter, filter) => {
            let Val::List(items) = eval(iter, env)? else {
                return Err(env.fail("`for … in` needs a list".into()));
            };
            let mut out = Vec::with_capacity(items.len());
            for x in items {
                env.push_local(var, x);
                let keep = match filter {
                    None => Ok(true),
                    Some(f) => eval(f, env).and_then(|c| c.truthy().map_err(|m| env.fail(m))),
                };
                let v = match keep {
                    Ok(true) => eval(body, env).map(Some),
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                };
                env.pop_local();
                if let Some(v) = v? {
                    out.push(v);
                }
            }
            Ok(Val::List(out))
        }
        Expr::Table(items) => {
            let mut out = BTreeMap::new();
            for (k, a) in items {
                out.insert(k.clone(), eval(a, env)?);
            }
            Ok(Val::Table(out))
        }
        Expr::Field(a, f) => match eval(a, env)? {
            Val::Table(t) => Ok(t.get(f).cloned().unwrap_or(Val::Null)),
            Val::Null => Ok(Val::Null),
            v => Err(env.fail(format!("`.{f}` of {}", v.type_name()))),
        },
        Expr::Index(a, i) => {
            let v = eval(a, env)?;
            let i = eval(i, env)?;
            match (v, i) {
                (Val::List(l), Val::Int(i)) => {
                    let len = l.len() as i64;
                    let k = if i < 0 { i + len } else { i };
                    usize::try_from(k)
                        .ok()
                        .and_then(|k| l.get(k).cloned())
                        .ok_or_else(|| {
                            env.fail(format!("index {i} is outside a list of {len} items"))
                        })
                }
                (Val::Table(t), Val::Str(k)) => Ok(t.get(&k).cloned().unwrap_or(Val::Null)),
                (v, i) => Err(env.fail(format!(
                    "cannot index {} with {}",
                    v.type_name(),
                    i.type_name()
                ))),
            }
        }
    }
}

fn binary(op: Bin, l: Val, r: Val) -> Result<Val, String> {
    use Val::*;
    let overflow = || "integer overflow".to_string();
    Ok(match op {
        Bin::Eq => Bool(equal(&l, &r)),
        Bin::Ne => Bool(!equal(&l, &r)),
        Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge => {
            let ord = match (&l, &r) {
                (Str(a), Str(b)) => a.partial_cmp(b),
                _ => match (num(&l), num(&r)) {
                    (Some(a), Some(b)) => a.partial_cmp(&b),
                    _ => {
                        return Err(format!(
                            "cannot compare {} with {}",
                            l.type_name(),
                            r.type_name()
                        ));
                    }
                },
            };
            let Some(o) = ord else {
                return Ok(Bool(false));
            };
            Bool(match op {
                Bin::Lt => o.is_lt(),
                Bin::Le => o.is_le(),
                Bin::Gt => o.is_gt(),
                _ => o.is_ge(),
            })
        }
        Bin::Add => match (l, r) {
            (Int(a), Int(b)) => Int(a.checked_add(b).ok_or_else(overflow)?),
            (Str(a), Str(b)) => Str(a + &b),
            (List(mut a), List(b)) => {
                a.extend(b);
                List(a)
            }
            (a, b) => float_op(&a, &b, "+", |x, y| x + y)?,
        },
        Bin::Sub => match (l, r) {
            (Int(a), Int(b)) => Int(a.checked_sub(b).ok_or_else(overflow)?),
            (a, b) => float_op(&a, &b, "-", |x, y| x - y)?,
        },
        Bin::Mul => match (l, r) {
            (Int(a), Int(b)) => Int(a.checked_mul(b).ok_or_else(overflow)?),
            (a, b) => float_op(&a, &b, "*", |x, y| x * y)?,
        },
        Bin::Div => {
            if num(&r) == Some(0.0) {
                return Err("division by zero".into());
            }
            float_op(&l, &r, "/", |x, y| x / y)?
        }
        Bin::IntDiv | Bin::Rem => match (l, r) {
            (Int(_), Int(0)) => return Err("division by zero".into()),
            (Int(a), Int(b)) => Int(if op == Bin::IntDiv {
                a.checked_div_euclid(b).ok_or_else(overflow)?
            } else {
                a.checked_rem_euclid(b).ok_or_else(overflow)?
            }),
            (a, b) => {
                return Err(format!(
                    "`//` and `%` take integers, found {} and {}",
                    a.type_name(),
                    b.type_name()
                ));
            }
        },
        Bin::And | Bin::Or => unreachable!("evaluated lazily"),
    })
}

fn float_op(l: &Val, r: &Val, sym: &str, f: impl Fn(f64, f64) -> f64) -> Result<Val, String> {
    match (num(l), num(r)) {
        (Some(a), Some(b)) => Ok(Val::Float(f(a, b))),
        _ => Err(format!(
            "cannot apply `{sym}` to {} and {}",
            l.type_name(),
            r.type_name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T(Vec<(String, Val)>);
    impl Env for T {
        type Error = String;
        fn name(&mut self, n: &str) -> Result<Val, String> {
            self.0
                .iter()
                .rev()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("unknown {n}"))
        }
        fn call(&mut self, f: &str, args: Vec<Val>) -> Result<Val, String> {
            match (f, args.as_slice()) {
                ("range", [Val::Int(n)]) => Ok(Val::List((0..*n).map(Val::Int).collect())),
                _ => Err(format!("no {f}")),
            }
        }
        fn fail(&mut self, m: String) -> String {
            m
        }
        fn push_local(&mut self, n: &str, v: Val) {
            self.0.push((n.into(), v));
        }
        fn pop_local(&mut self) {
            self.0.pop();
        }
    }

    fn ev(src: &str) -> Result<Val, String> {
        let e = parse(src)?;
        eval(
            &e,
            &mut T(vec![
                ("d".into(), Val::Int(48)),
                ("h".into(), Val::Int(0)),
                ("s".into(), Val::Str("gated-gelu".into())),
                ("n".into(), Val::Null),
            ]),
        )
    }

    #[test]
    fn arithmetic_and_precedence() {
        assert_eq!(ev("1 + 2 * 3").unwrap(), Val::Int(7));
        assert_eq!(ev("(1 + 2) * 3").unwrap(), Val::Int(9));
        assert_eq!(ev("d // 5").unwrap(), Val::Int(9));
        assert_eq!(ev("d % 5").unwrap(), Val::Int(3));
        assert_eq!(ev("d / 5").unwrap(), Val::Float(9.6));
        assert_eq!(ev("-d + 1").unwrap(), Val::Int(-47));
        assert_eq!(ev("2.5e-1 * 4").unwrap(), Val::Float(1.0));
        assert_eq!(ev("'a' + \"b\"").unwrap(), Val::Str("ab".into()));
        assert_eq!(
            ev("[1] + [2, 3]").unwrap(),
            Val::List(vec![Val::Int(1), Val::Int(2), Val::Int(3)])
        );
        assert!(
            ev("9223372036854775807 + 1")
                .unwrap_err()
                .contains("overflow")
        );
    }

    #[test]
    fn laziness_guards_division() {
        assert_eq!(ev("h > 0 and d % h == 0").unwrap(), Val::Bool(false));
        assert_eq!(ev("h == 0 or d % h == 0").unwrap(), Val::Bool(true));
        assert_eq!(ev("if h == 0 then 1 else d // h").unwrap(), Val::Int(1));
        assert!(ev("d // h").unwrap_err().contains("division by zero"));
    }

    #[test]
    fn comparisons_with_null_never_fail() {
        assert_eq!(ev("n == null").unwrap(), Val::Bool(true));
        assert_eq!(ev("n == 0").unwrap(), Val::Bool(false));
        assert_eq!(ev("n != 'x'").unwrap(), Val::Bool(true));
        assert_eq!(ev("1 == 1.0").unwrap(), Val::Bool(true));
        assert!(ev("n < 1").is_err());
    }

    #[test]
    fn lists_tables_and_comprehensions() {
        assert_eq!(
            ev("[i % 2 == 0 for i in range(3)]").unwrap(),
            Val::List(vec![Val::Bool(true), Val::Bool(false), Val::Bool(true)])
        );
        assert_eq!(
            ev("[i for i in range(5) if i % 2 == 1]").unwrap(),
            Val::List(vec![Val::Int(1), Val::Int(3)])
        );
        assert!(
            ev("[i for i in range(2) if i]")
                .unwrap_err()
                .contains("true or false")
        );
        assert_eq!(ev("{ a = 1, 'b c' = d }.a").unwrap(), Val::Int(1));
        assert_eq!(ev("{ a = 1 }.missing").unwrap(), Val::Null);
        assert_eq!(ev("[4, 5, 6][-1]").unwrap(), Val::Int(6));
        assert!(ev("[4][1]").unwrap_err().contains("outside"));
    }

    #[test]
    fn syntax_errors_say_where() {
        assert!(parse("1 +").unwrap_err().contains("ends early"));
        assert!(parse("(1").unwrap_err().contains("expected `)`"));
        assert!(parse("if a then b").unwrap_err().contains("`else`"));
        assert!(parse("a b").unwrap_err().contains("unexpected text at `b`"));
        assert!(parse("'open").unwrap_err().contains("not closed"));
        assert!(parse(&"(".repeat(100)).unwrap_err().contains("nests"));
        assert!(parse(&"-".repeat(100)).unwrap_err().contains("nests"));
    }

    #[test]
    fn references_skip_bound_names() {
        let e = parse("[i + d for i in range(n)]").unwrap();
        let (mut names, mut calls) = (Vec::new(), Vec::new());
        references(&e, &mut names, &mut calls);
        assert_eq!(names, ["n", "d"]);
        assert_eq!(calls, ["range"]);
    }
}
