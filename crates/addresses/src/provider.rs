//! The external geocoders otstream asks, and how their answers read.

use serde::Deserialize;

/// Which service `url` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Nominatim (`/reverse?format=jsonv2`): OpenStreetMap's own; its
    /// public instance allows one request a second.
    Nominatim,
    /// Photon (`/reverse`), komoot's: GeoJSON answers.
    Photon,
}

impl Provider {
    /// The request's path and query for a position.
    pub fn target(self, lat: f64, lon: f64, language: Option<&str>) -> String {
        let lang = |key: &str| language.map_or(String::new(), |l| format!("&{key}={l}"));
        match self {
            Provider::Nominatim => format!(
                "/reverse?format=jsonv2&lat={lat:.6}&lon={lon:.6}&zoom=18&addressdetails=0{}",
                lang("accept-language")
            ),
            Provider::Photon => format!("/reverse?lat={lat:.6}&lon={lon:.6}{}", lang("lang")),
        }
    }

    /// The address in an answer: `Ok(None)` when the service found
    /// nothing there (at sea), `Err` when the body is not its format.
    pub fn address(self, body: &[u8]) -> Result<Option<String>, String> {
        match self {
            Provider::Nominatim => {
                #[derive(Deserialize)]
                struct Answer {
                    display_name: Option<String>,
                }
                // `{"error":"Unable to geocode"}` at sea: no display name.
                let a: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                Ok(a.display_name.filter(|n| !n.is_empty()))
            }
            Provider::Photon => {
                #[derive(Deserialize)]
                struct Answer {
                    features: Vec<Feature>,
                }
                #[derive(Deserialize)]
                struct Feature {
                    properties: Properties,
                }
                #[derive(Deserialize, Default)]
                #[serde(default)]
                struct Properties {
                    name: Option<String>,
                    housenumber: Option<String>,
                    street: Option<String>,
                    postcode: Option<String>,
                    city: Option<String>,
                    country: Option<String>,
                }
                let a: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                let Some(f) = a.features.into_iter().next() else {
                    return Ok(None);
                };
                let p = f.properties;
                let join = |parts: &[&Option<String>]| {
                    let words: Vec<&str> = parts
                        .iter()
                        .filter_map(|s| s.as_deref())
                        .filter(|s| !s.is_empty())
                        .collect();
                    (!words.is_empty()).then(|| words.join(" "))
                };
                // "name, street number, postcode city, country", as far as known.
                let parts: Vec<String> = [
                    p.name.clone().filter(|n| Some(n) != p.street.as_ref()),
                    join(&[&p.street, &p.housenumber]),
                    join(&[&p.postcode, &p.city]),
                    p.country.clone(),
                ]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect();
                Ok((!parts.is_empty()).then(|| parts.join(", ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominatim_answers() {
        // Shaped as nominatim.org's documentation shows them.
        let found = br#"{"place_id":"134140761","licence":"Data (c) OpenStreetMap contributors, ODbL 1.0. https://www.openstreetmap.org/copyright","osm_type":"way","osm_id":"280940520","lat":"-34.4391708","lon":"-58.7064573","place_rank":"26","category":"highway","type":"motorway","importance":"0.1","addresstype":"road","display_name":"Autopista Pedro Eugenio Aramburu, El Triangulo, Partido de Malvinas Argentinas, Buenos Aires, 1.619, Argentina","name":"Autopista Pedro Eugenio Aramburu","boundingbox":["-34.44159","-34.4370994","-58.7086067","-58.7044712"]}"#;
        assert_eq!(
            Provider::Nominatim.address(found),
            Ok(Some("Autopista Pedro Eugenio Aramburu, El Triangulo, Partido de Malvinas Argentinas, Buenos Aires, 1.619, Argentina".into()))
        );
        assert_eq!(
            Provider::Nominatim.address(br#"{"error":"Unable to geocode"}"#),
            Ok(None)
        );
        assert!(Provider::Nominatim.address(b"<html>").is_err());
        assert_eq!(
            Provider::Nominatim.target(48.8583, 2.2945, Some("fr")),
            "/reverse?format=jsonv2&lat=48.858300&lon=2.294500&zoom=18&addressdetails=0&accept-language=fr"
        );
    }

    #[test]
    fn photon_answers() {
        let found = br#"{"features":[{"geometry":{"coordinates":[13.3888,52.5170],"type":"Point"},"type":"Feature","properties":{"osm_id":123,"country":"Germany","city":"Berlin","countrycode":"DE","postcode":"10117","type":"house","street":"Unter den Linden","housenumber":"77","name":"Hotel Adlon"}}],"type":"FeatureCollection"}"#;
        assert_eq!(
            Provider::Photon.address(found),
            Ok(Some(
                "Hotel Adlon, Unter den Linden 77, 10117 Berlin, Germany".into()
            ))
        );
        let street = br#"{"features":[{"type":"Feature","properties":{"name":"Rue de Rivoli","street":"Rue de Rivoli","city":"Paris","country":"France"}}]}"#;
        assert_eq!(
            Provider::Photon.address(street),
            Ok(Some("Rue de Rivoli, Paris, France".into()))
        );
        assert_eq!(
            Provider::Photon.address(br#"{"features":[],"type":"FeatureCollection"}"#),
            Ok(None)
        );
        assert_eq!(
            Provider::Photon.target(1.0, 2.0, None),
            "/reverse?lat=1.000000&lon=2.000000"
        );
    }
}
