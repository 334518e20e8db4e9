//! The precious-metal alloys the workshop casts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An alloy, named on the wire by its fineness (`gold_585` is 585/1000 gold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Material {
    /// 14-karat yellow gold.
    #[serde(rename = "gold_585")]
    Gold585,
    /// 18-karat yellow gold.
    #[serde(rename = "gold_750")]
    Gold750,
    /// Sterling silver.
    #[serde(rename = "silver_925")]
    Silver925,
    /// Platinum 950 (with ruthenium).
    #[serde(rename = "platinum_950")]
    Platinum950,
}

impl Material {
    pub const ALL: [Material; 4] = [
        Self::Gold585,
        Self::Gold750,
        Self::Silver925,
        Self::Platinum950,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gold585 => "gold_585",
            Self::Gold750 => "gold_750",
            Self::Silver925 => "silver_925",
            Self::Platinum950 => "platinum_950",
        }
    }

    /// Density in g/cm³ of the cast alloy. Published figures for the common alloys: 14K
    /// yellow gold 12.9–13.6, 18K yellow gold 15.2–15.9, sterling silver 10.36, Pt950/Ru
    /// about 20.7 (Pt950/Ir is denser, 21.4). The figures below are those of the alloys this
    /// workshop stocks; the weight a customer pays for follows from them.
    pub fn density_g_per_cm3(self) -> f64 {
        match self {
            Self::Gold585 => 13.1,
            Self::Gold750 => 15.5,
            Self::Silver925 => 10.36,
            Self::Platinum950 => 20.7,
        }
    }
}

impl fmt::Display for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A material name outside the list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown material `{0}`; use one of: gold_585, gold_750, silver_925, platinum_950")]
pub struct UnknownMaterial(pub String);

impl FromStr for Material {
    type Err = UnknownMaterial;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMaterial(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for material in Material::ALL {
            assert_eq!(material.as_str().parse::<Material>(), Ok(material));
            let json = serde_json::to_string(&material).unwrap();
            assert_eq!(json, format!("\"{}\"", material.as_str()));
            assert_eq!(serde_json::from_str::<Material>(&json).unwrap(), material);
        }
    }

    #[test]
    fn an_unknown_material_lists_the_valid_ones() {
        let err = "bronze".parse::<Material>().unwrap_err().to_string();
        for material in Material::ALL {
            assert!(err.contains(material.as_str()), "{err}");
        }
        assert!(serde_json::from_str::<Material>("\"gold\"").is_err());
    }
}
