//! Putting holdings in: the demo portfolio of a first run, and CSV imports of real ones.

use std::io::Read;

use rust_decimal::Decimal;

use crate::db::market::NewStock;
use crate::db::{Db, DbResult};

/// The demo portfolio's name.
pub const DEMO_PORTFOLIO: &str = "Demo portfolio";

/// Demo stocks: symbol, name, quantity, a starting price for the simulated provider.
const DEMO: &[(&str, &str, &str, &str)] = &[
    ("AAPL", "Apple Inc.", "25", "189.9500"),
    ("MSFT", "Microsoft Corporation", "12", "415.2000"),
    ("NVDA", "NVIDIA Corporation", "30", "121.4400"),
    ("AMZN", "Amazon.com, Inc.", "18", "178.2500"),
    ("KO", "The Coca-Cola Company", "40", "62.8100"),
];

/// Create the demo portfolio with five US stocks unless a portfolio of that name exists;
/// whether it was created.
pub async fn seed_demo(db: &Db, now_ms: i64) -> DbResult<bool> {
    if db
        .portfolios()
        .await?
        .iter()
        .any(|p| p.name == DEMO_PORTFOLIO)
    {
        return Ok(false);
    }
    let portfolio = db.ensure_portfolio(DEMO_PORTFOLIO, "USD", now_ms).await?;
    for (symbol, name, quantity, price) in DEMO {
        let stock_id = db
            .upsert_stock(&NewStock {
                symbol: (*symbol).to_owned(),
                exchange: "US".to_owned(),
                name: (*name).to_owned(),
                currency: "USD".to_owned(),
            })
            .await?;
        db.set_holding(
            portfolio.id,
            stock_id,
            quantity.parse().expect("a demo quantity"),
        )
        .await?;
        // A starting point for the simulated provider's walk, a day old so that the first
        // update makes history; not fresh enough to be mistaken for a real quote for long.
        let quote = crate::providers::Quote {
            stock_id,
            price: price.parse().expect("a demo price"),
            at_ms: now_ms - 24 * 3600 * 1000,
            volume: None,
        };
        db.store_quotes(&[quote], "demo-seed", now_ms - 24 * 3600 * 1000)
            .await?;
    }
    Ok(true)
}

/// One rejected row of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Line in the file (the header is line 1).
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Import {
    /// Holdings written.
    pub imported: usize,
    /// Rows left out, with why.
    pub errors: Vec<RowError>,
}

/// The columns of a holdings CSV (a header row names them, in any order): `symbol` and
/// `quantity` are required; `exchange` (default `US`), `name` and `currency` (default the
/// portfolio's) are optional.
#[derive(Debug, serde::Deserialize)]
struct Row {
    symbol: String,
    quantity: String,
    #[serde(default)]
    exchange: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    currency: Option<String>,
}

/// Load holdings into the portfolio `portfolio` (created in `currency` when missing; rows
/// without a currency take the portfolio's). Every row is checked first; the good rows are
/// written and each bad one is reported with its line (line 0: the arguments).
pub async fn import_holdings(
    db: &Db,
    input: impl Read,
    portfolio: &str,
    currency: &str,
    now_ms: i64,
) -> DbResult<Import> {
    let mut import = Import::default();
    if portfolio.is_empty() || portfolio.len() > 191 {
        import.errors.push(RowError {
            line: 0,
            message: format!("portfolio name {portfolio:?}: expected 1 to 191 characters"),
        });
        return Ok(import);
    }
    // Rows without a currency take the portfolio's: its own when it exists already.
    let existing = db
        .portfolios()
        .await?
        .into_iter()
        .find(|p| p.name == portfolio);
    let currency = match &existing {
        Some(existing) => existing.currency.clone(),
        None => match currency_code(currency) {
            Ok(code) => code,
            Err(message) => {
                import.errors.push(RowError { line: 0, message });
                return Ok(import);
            }
        },
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(input);
    let mut valid: Vec<(u64, NewStock, Decimal)> = Vec::new();
    for (index, record) in reader.deserialize::<Row>().enumerate() {
        let line = index as u64 + 2;
        let checked = match record {
            Err(err) => {
                import.errors.push(RowError {
                    line: err.position().map_or(line, |p| p.line()),
                    message: csv_message(&err),
                });
                continue;
            }
            Ok(row) => check(row, &currency),
        };
        match checked {
            Ok((stock, quantity)) => {
                let earlier = valid.iter().find(|(_, seen, _)| {
                    seen.symbol == stock.symbol && seen.exchange == stock.exchange
                });
                match earlier {
                    Some((first, _, _)) => import.errors.push(RowError {
                        line,
                        message: format!(
                            "{} on {} is on line {first} already",
                            stock.symbol, stock.exchange
                        ),
                    }),
                    None => valid.push((line, stock, quantity)),
                }
            }
            Err(message) => import.errors.push(RowError { line, message }),
        }
    }
    if valid.is_empty() {
        return Ok(import);
    }
    let portfolio = match existing {
        Some(existing) => existing,
        None => db.ensure_portfolio(portfolio, &currency, now_ms).await?,
    };
    for (_, stock, quantity) in valid {
        let stock_id = db.upsert_stock(&stock).await?;
        db.set_holding(portfolio.id, stock_id, quantity).await?;
        import.imported += 1;
    }
    Ok(import)
}

fn currency_code(text: &str) -> Result<String, String> {
    let code = text.to_ascii_uppercase();
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code)
    } else {
        Err(format!(
            "currency {text:?}: expected a three-letter code like USD"
        ))
    }
}

fn check(row: Row, default_currency: &str) -> Result<(NewStock, Decimal), String> {
    let symbol = row.symbol.to_ascii_uppercase();
    if symbol.is_empty() || symbol.len() > 32 {
        return Err(format!(
            "symbol {:?}: expected 1 to 32 characters",
            row.symbol
        ));
    }
    let quantity: Decimal = row.quantity.parse().map_err(|_| {
        format!(
            "quantity {:?}: expected a decimal number like 12.5",
            row.quantity
        )
    })?;
    if quantity <= Decimal::ZERO {
        return Err(format!("quantity {quantity}: expected more than zero"));
    }
    if quantity.scale() > crate::money::SCALE || crate::money::to_e4(quantity).is_none() {
        return Err(format!(
            "quantity {quantity}: expected at most 4 decimal places and a size the database holds"
        ));
    }
    let exchange = row
        .exchange
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "US".to_owned())
        .to_ascii_uppercase();
    if exchange.len() > 16 {
        return Err(format!(
            "exchange {exchange:?}: expected at most 16 characters"
        ));
    }
    let currency = match row.currency.filter(|c| !c.is_empty()) {
        Some(currency) => currency_code(&currency)?,
        None => default_currency.to_owned(),
    };
    let name = row
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| symbol.clone());
    if name.len() > 255 {
        return Err(format!("name of {symbol}: expected at most 255 characters"));
    }
    Ok((
        NewStock {
            symbol,
            exchange,
            name,
            currency,
        },
        quantity,
    ))
}

fn csv_message(err: &csv::Error) -> String {
    match err.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("{len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Deserialize { err, .. } => err.to_string(),
        _ => err.to_string(),
    }
}
