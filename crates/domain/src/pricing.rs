//! The price of a piece, from its model and material.
//!
//! ```text
//! volume_cm3     = volume_mm3 / 1000
//! metal_weight_g = round(volume_cm3 × density, 0.01 g)
//! metal          = round(metal_weight_g × (1 + casting_loss) × metal_price_per_g)
//! labour         = labour_base + round(volume_cm3 × labour_per_cm3)
//! total          = metal + labour
//! ```
//!
//! Money is whole euro cents (`i64`), never floating point; every `round` is to the nearest
//! cent (or 0.01 g), halves away from zero. `casting_loss` is the metal lost to sprues and
//! finishing, which the customer pays for.

use serde::{Deserialize, Serialize};

use crate::material::Material;
use crate::stl::MeshReport;

/// A priced model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    pub volume_mm3: f64,
    pub metal_weight_g: f64,
    pub metal_cents: i64,
    pub labour_cents: i64,
    pub total_cents: i64,
    /// ISO 4217, `EUR`.
    pub currency: String,
}

/// The workshop's prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceList {
    /// Cents per gram of cast alloy, by material.
    pub gold_585_cents_per_g: i64,
    pub gold_750_cents_per_g: i64,
    pub silver_925_cents_per_g: i64,
    pub platinum_950_cents_per_g: i64,
    /// Fraction of the metal lost in casting and finishing (0.08 = 8 %).
    pub casting_loss: f64,
    /// Set-up, casting and finishing of any piece.
    pub labour_base_cents: i64,
    /// Work that grows with the size of the piece.
    pub labour_cents_per_cm3: i64,
}

impl Default for PriceList {
    /// The workshop's list prices (EUR, metal prices of late 2026).
    fn default() -> Self {
        Self {
            gold_585_cents_per_g: 5_500,
            gold_750_cents_per_g: 7_200,
            silver_925_cents_per_g: 110,
            platinum_950_cents_per_g: 3_500,
            casting_loss: 0.08,
            labour_base_cents: 4_500,
            labour_cents_per_cm3: 3_000,
        }
    }
}

/// Rounds to the nearest whole number, halves away from zero.
fn round_half_away(value: f64) -> f64 {
    value.round()
}

impl PriceList {
    pub fn cents_per_g(&self, material: Material) -> i64 {
        match material {
            Material::Gold585 => self.gold_585_cents_per_g,
            Material::Gold750 => self.gold_750_cents_per_g,
            Material::Silver925 => self.silver_925_cents_per_g,
            Material::Platinum950 => self.platinum_950_cents_per_g,
        }
    }

    /// Prices a measured model (see the module documentation for the formula).
    pub fn quote(&self, material: Material, mesh: &MeshReport) -> Quote {
        let volume_cm3 = mesh.volume_mm3 / 1000.0;
        let metal_weight_g =
            round_half_away(volume_cm3 * material.density_g_per_cm3() * 100.0) / 100.0;
        let metal_cents = round_half_away(
            metal_weight_g * (1.0 + self.casting_loss) * self.cents_per_g(material) as f64,
        ) as i64;
        let labour_cents = self
            .labour_base_cents
            .saturating_add(round_half_away(volume_cm3 * self.labour_cents_per_cm3 as f64) as i64);
        Quote {
            volume_mm3: mesh.volume_mm3,
            metal_weight_g,
            metal_cents,
            labour_cents,
            // Saturating: a price this large is refused before it is quoted (see
            // `MAX_PIECE_MM`), and arithmetic must not be what stops a quote.
            total_cents: metal_cents.saturating_add(labour_cents),
            currency: "EUR".into(),
        }
    }
}

/// The largest piece the workshop makes: no side of a model's bounding box may be longer.
pub const MAX_PIECE_MM: f64 = 300.0;

/// Why a model that analysed cleanly is not priced: it describes no piece the workshop can
/// make. `None` when it can be priced.
pub fn out_of_range(mesh: &MeshReport) -> Option<(&'static str, String)> {
    let longest = mesh.bounding_box_mm.iter().copied().fold(0.0_f64, f64::max);
    if !longest.is_finite() || longest > MAX_PIECE_MM {
        return Some((
            "model_too_large",
            format!(
                "the model is {longest:.0} mm across; the workshop makes pieces of at most {MAX_PIECE_MM:.0} mm (is it in millimetres?)"
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(volume_mm3: f64) -> MeshReport {
        MeshReport {
            triangles: 12,
            bodies: 1,
            cavities: 0,
            volume_mm3,
            bounding_box_mm: [10.0; 3],
            surface_area_mm2: 600.0,
        }
    }

    #[test]
    fn a_one_cubic_centimetre_piece_costs_its_metal_and_labour() {
        let prices = PriceList::default();
        // 1 cm³ of 18K gold: 15.50 g; metal 15.50 × 1.08 × 72.00 € = 1205.28 €;
        // labour 45 € + 30 € = 75 €.
        let quote = prices.quote(Material::Gold750, &mesh(1000.0));
        assert_eq!(quote.metal_weight_g, 15.5);
        assert_eq!(quote.metal_cents, 120_528);
        assert_eq!(quote.labour_cents, 7_500);
        assert_eq!(quote.total_cents, 128_028);
        assert_eq!(quote.currency, "EUR");
    }

    #[test]
    fn each_material_uses_its_density_and_price() {
        let prices = PriceList::default();
        let cases = [
            // weight g, metal cents
            (Material::Gold585, 2.62, 15_563), // 0.2 cm³ × 13.1; 2.62 × 1.08 × 55
            (Material::Silver925, 2.07, 246),  // 0.2 × 10.36 = 2.072 → 2.07; × 1.08 × 1.10
            (Material::Platinum950, 4.14, 15_649), // 0.2 × 20.7; 4.14 × 1.08 × 35
        ];
        for (material, weight, metal) in cases {
            let quote = prices.quote(material, &mesh(200.0));
            assert_eq!(quote.metal_weight_g, weight, "{material}");
            assert_eq!(quote.metal_cents, metal, "{material}");
            assert_eq!(quote.labour_cents, 4_500 + 600, "{material}");
        }
    }

    #[test]
    fn halves_round_away_from_zero() {
        assert_eq!(round_half_away(2.5), 3.0);
        assert_eq!(round_half_away(-2.5), -3.0);
        assert_eq!(round_half_away(2.4999), 2.0);
    }

    #[test]
    fn a_model_larger_than_any_piece_is_refused_with_its_size_and_prices_never_overflow() {
        let mut huge = mesh(1.25e17); // a cube of 500 m
        huge.bounding_box_mm = [500_000.0; 3];
        let (code, message) = out_of_range(&huge).unwrap();
        assert_eq!(code, "model_too_large");
        assert!(message.contains("500000 mm across"), "{message}");
        assert!(out_of_range(&mesh(1000.0)).is_none());
        // Quoted anyway, nothing overflows.
        let quote = PriceList::default().quote(Material::Platinum950, &huge);
        assert_eq!(quote.total_cents, i64::MAX);
    }
}
