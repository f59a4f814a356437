//! Targets: ratios of figures from one run, each reported met, MISSED, or not
//! measured (when the options left out what it needs).

use super::report::Table;

/// One target: a ratio and the bound it must meet.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) name: String,
    /// The ratio measured, if both sides were.
    pub(crate) value: Option<f64>,
    pub(crate) bound: Bound,
    pub(crate) unit: Unit,
}

/// What a target's value and bound count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A ratio of two figures, printed `1.23x`.
    Ratio,
    /// Bytes, printed `1234 B`.
    Bytes,
}

impl Unit {
    fn show(self, value: f64) -> String {
        match self {
            Unit::Ratio => format!("{value:.2}x"),
            Unit::Bytes => format!("{value:.0} B"),
        }
    }
}

/// Which side of its bound a ratio must be on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    pub(crate) fn new(name: impl Into<String>, value: Option<f64>, bound: Bound) -> Self {
        Target {
            name: name.into(),
            value,
            bound,
            unit: Unit::Ratio,
        }
    }

    /// The same target, its value and bound counted in `unit`.
    pub(crate) fn in_unit(mut self, unit: Unit) -> Self {
        self.unit = unit;
        self
    }

    fn verdict(&self) -> &'static str {
        match (self.value, self.bound) {
            (None, _) => "not measured",
            (Some(v), Bound::AtLeast(b)) if v >= b => "met",
            (Some(v), Bound::AtMost(b)) if v <= b => "met",
            _ => "MISSED",
        }
    }

    pub(crate) fn json(&self) -> String {
        let (op, bound) = match self.bound {
            Bound::AtLeast(b) => (">=", b),
            Bound::AtMost(b) => ("<=", b),
        };
        serde_json::json!({
            "target": self.name,
            "value": self.value,
            "bound": format!("{op} {bound}"),
            "verdict": self.verdict(),
        })
        .to_string()
    }
}

/// The targets as a markdown table.
pub(crate) fn markdown(targets: &[Target]) -> Table {
    let mut table = Table::new(["target", "measured", "bound", "verdict"]);
    for target in targets {
        let (op, b) = match target.bound {
            Bound::AtLeast(b) => (">=", b),
            Bound::AtMost(b) => ("<=", b),
        };
        let bound = match target.unit {
            Unit::Ratio => format!("{op} {b}x"),
            Unit::Bytes => format!("{op} {}", Unit::Bytes.show(b)),
        };
        table.row([
            target.name.clone(),
            target
                .value
                .map_or_else(|| "-".to_owned(), |v| target.unit.show(v)),
            bound,
            target.verdict().to_owned(),
        ]);
    }
    table
}
