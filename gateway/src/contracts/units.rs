//! SenML unit names (RFC 8428 §12.1, RFC 8798) and conversion between units of
//! one dimension.
//!
//! Every known unit has a dimension and an affine map to its dimension's base
//! unit: `base = value × scale + offset`. Converting `from → to` goes through
//! the base. Units of different dimensions (or unknown units) do not convert.
//! A few common names that SenML does not register are accepted as sources of
//! a conversion because sensors send them: `Fah`, `psi`, `bar`, `mbar`, `mm/s`,
//! `cm/s`, `l/min`, `l/h`, `m3/h`.

/// What a unit measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Temperature,
    Pressure,
    /// Dimensionless ratios: `/`, `%`, `%RH`, `ppm`…
    Ratio,
    Velocity,
    Acceleration,
    Current,
    VolumeFlow,
    Volume,
    Voltage,
    Power,
    Energy,
    Time,
    Length,
    Frequency,
    Mass,
    Angle,
    Charge,
    /// A unit that converts only to itself (lux, dBm, counts…).
    Own(&'static str),
}

/// One known unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnitDef {
    pub name: &'static str,
    pub dimension: Dimension,
    /// `base = value × scale + offset`.
    pub scale: f64,
    pub offset: f64,
}

const fn u(name: &'static str, dimension: Dimension, scale: f64) -> UnitDef {
    UnitDef {
        name,
        dimension,
        scale,
        offset: 0.0,
    }
}

const fn own(name: &'static str) -> UnitDef {
    u(name, Dimension::Own(name), 1.0)
}

use Dimension::*;

/// Every unit this gateway knows. Base units: K, Pa, `/`, m/s, m/s2, A, m3/s,
/// m3, V, W, J, s, m, Hz, kg, rad, C.
pub const UNITS: &[UnitDef] = &[
    // Temperature (base K).
    u("K", Temperature, 1.0),
    UnitDef {
        name: "Cel",
        dimension: Temperature,
        scale: 1.0,
        offset: 273.15,
    },
    UnitDef {
        name: "Fah",
        dimension: Temperature,
        scale: 5.0 / 9.0,
        offset: 273.15 - 32.0 * 5.0 / 9.0,
    },
    // Pressure (base Pa).
    u("Pa", Pressure, 1.0),
    u("hPa", Pressure, 100.0),
    u("kPa", Pressure, 1e3),
    u("MPa", Pressure, 1e6),
    u("bar", Pressure, 1e5),
    u("mbar", Pressure, 100.0),
    u("psi", Pressure, 6_894.757_293_168_361),
    // Ratios (base `/`).
    u("/", Ratio, 1.0),
    u("%", Ratio, 0.01),
    u("%RH", Ratio, 0.01),
    u("%EL", Ratio, 0.01),
    u("/100", Ratio, 0.01),
    u("/1000", Ratio, 0.001),
    u("ppm", Ratio, 1e-6),
    u("ppb", Ratio, 1e-9),
    // Velocity (base m/s).
    u("m/s", Velocity, 1.0),
    u("mm/s", Velocity, 1e-3),
    u("cm/s", Velocity, 1e-2),
    u("km/h", Velocity, 1.0 / 3.6),
    u("m/h", Velocity, 1.0 / 3600.0),
    u("mm/h", Velocity, 1e-3 / 3600.0),
    u("m/s2", Acceleration, 1.0),
    // Current (base A).
    u("A", Current, 1.0),
    u("mA", Current, 1e-3),
    u("kA", Current, 1e3),
    // Volume flow (base m3/s).
    u("m3/s", VolumeFlow, 1.0),
    u("m3/h", VolumeFlow, 1.0 / 3600.0),
    u("l/s", VolumeFlow, 1e-3),
    u("l/min", VolumeFlow, 1e-3 / 60.0),
    u("l/h", VolumeFlow, 1e-3 / 3600.0),
    u("m3", Volume, 1.0),
    u("l", Volume, 1e-3),
    // Electrical.
    u("V", Voltage, 1.0),
    u("mV", Voltage, 1e-3),
    u("kV", Voltage, 1e3),
    u("W", Power, 1.0),
    u("mW", Power, 1e-3),
    u("kW", Power, 1e3),
    u("J", Energy, 1.0),
    u("kJ", Energy, 1e3),
    u("Wh", Energy, 3600.0),
    u("kWh", Energy, 3.6e6),
    u("C", Charge, 1.0),
    u("Ah", Charge, 3600.0),
    // Time, length, frequency, mass, angle.
    u("s", Time, 1.0),
    u("ms", Time, 1e-3),
    u("us", Time, 1e-6),
    u("min", Time, 60.0),
    u("h", Time, 3600.0),
    u("d", Time, 86_400.0),
    u("m", Length, 1.0),
    u("mm", Length, 1e-3),
    u("cm", Length, 1e-2),
    u("km", Length, 1e3),
    u("Hz", Frequency, 1.0),
    u("kHz", Frequency, 1e3),
    u("MHz", Frequency, 1e6),
    u("1/s", Frequency, 1.0),
    u("1/min", Frequency, 1.0 / 60.0),
    u("kg", Mass, 1.0),
    u("g", Mass, 1e-3),
    u("rad", Angle, 1.0),
    u("deg", Angle, std::f64::consts::PI / 180.0),
    // Units that convert only to themselves.
    own("lx"),
    own("lm"),
    own("cd"),
    own("dB"),
    own("dBm"),
    own("dBW"),
    own("Bspl"),
    own("W/m2"),
    own("Ohm"),
    own("S"),
    own("S/m"),
    own("F"),
    own("H"),
    own("T"),
    own("Wb"),
    own("N"),
    own("mol"),
    own("kat"),
    own("Bq"),
    own("Gy"),
    own("Sv"),
    own("m2"),
    own("kg/m3"),
    own("ug/m3"),
    own("VA"),
    own("var"),
    own("VAh"),
    own("varh"),
    own("B"),
    own("bit/s"),
    own("B/s"),
    own("beat/min"),
    own("beats"),
    own("count"),
    own("lat"),
    own("lon"),
];

/// The unit called `name` (case-sensitive, as SenML names are).
pub fn lookup(name: &str) -> Option<&'static UnitDef> {
    UNITS.iter().find(|u| u.name == name)
}

/// Why a value could not be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("unknown unit {0:?}")]
    Unknown(String),
    #[error("{from:?} cannot be converted to {to:?} (different quantities)")]
    Incompatible { from: String, to: String },
}

/// `value` in unit `from`, expressed in unit `to`. Same name → unchanged
/// (even for units this table does not know).
pub fn convert(value: f64, from: &str, to: &str) -> Result<f64, UnitError> {
    if from == to {
        return Ok(value);
    }
    let f = lookup(from).ok_or_else(|| UnitError::Unknown(from.to_owned()))?;
    let t = lookup(to).ok_or_else(|| UnitError::Unknown(to.to_owned()))?;
    if f.dimension != t.dimension {
        return Err(UnitError::Incompatible {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }
    let base = value * f.scale + f.offset;
    Ok((base - t.offset) / t.scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn the_conversion_table_gives_known_values() {
        let table: &[(f64, &str, &str, f64)] = &[
            (212.0, "Fah", "Cel", 100.0),
            (32.0, "Fah", "Cel", 0.0),
            (-40.0, "Fah", "Cel", -40.0),
            (0.0, "K", "Cel", -273.15),
            (300.0, "K", "Cel", 26.85),
            (100.0, "Cel", "Fah", 212.0),
            (1.0, "kPa", "Pa", 1000.0),
            (2.5, "bar", "Pa", 250_000.0),
            (1.0, "psi", "Pa", 6_894.757_293_168_361),
            (1013.25, "hPa", "Pa", 101_325.0),
            (1.0, "mbar", "Pa", 100.0),
            (0.45, "/", "%RH", 45.0),
            (45.0, "%", "%RH", 45.0),
            (3.2, "mm/s", "m/s", 0.0032),
            (36.0, "km/h", "m/s", 10.0),
            (1500.0, "mA", "A", 1.5),
            (12.0, "l/s", "m3/s", 0.012),
            (36.0, "m3/h", "m3/s", 0.01),
            (60.0, "l/min", "m3/s", 0.001),
            (1.0, "kWh", "J", 3.6e6),
            (180.0, "deg", "rad", std::f64::consts::PI),
        ];
        for &(v, from, to, want) in table {
            let got = convert(v, from, to).unwrap();
            assert!(close(got, want), "{v} {from} → {to}: {got}, want {want}");
        }
    }

    #[test]
    fn units_of_different_quantities_or_unknown_units_do_not_convert() {
        assert!(matches!(
            convert(1.0, "A", "Cel"),
            Err(UnitError::Incompatible { .. })
        ));
        assert!(matches!(
            convert(1.0, "lx", "dBm"),
            Err(UnitError::Incompatible { .. })
        ));
        assert_eq!(
            convert(1.0, "furlong", "m"),
            Err(UnitError::Unknown("furlong".into()))
        );
        assert_eq!(
            convert(1.0, "cel", "Cel"),
            Err(UnitError::Unknown("cel".into()))
        );
        assert_eq!(convert(7.0, "furlong", "furlong"), Ok(7.0));
    }

    #[test]
    fn unit_names_are_unique() {
        for (i, a) in UNITS.iter().enumerate() {
            assert!(
                UNITS[i + 1..].iter().all(|b| b.name != a.name),
                "{} twice",
                a.name
            );
        }
    }
}
