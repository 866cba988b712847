//! Cube refuses at submission exactly the image references the Docker engine refuses: a
//! reference the engine cannot parse must never reach a worker, and one it can must never be
//! refused. The engine is asked to create a container of each reference, as a worker does: it
//! parses the reference first (400 "invalid reference format" when it cannot) and only then
//! looks for the image (404; a container made of an image that is here is removed at once).

use anyhow::{bail, Result};
use std::collections::HashMap;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptionsBuilder};
use bollard::Docker;
use cube_shared::validate::{validate_image, IMAGE_REFERENCE_PIECES, INVALID_IMAGES, VALID_IMAGES};
use cube_tests::Rng;

/// Whether the engine parses `reference`.
async fn engine_accepts(docker: &Docker, reference: &str) -> Result<bool> {
    let body = ContainerCreateBody {
        image: Some(reference.to_string()),
        labels: Some(HashMap::from([(
            "cube.task.id".to_string(),
            "image-refs-probe".to_string(),
        )])),
        ..Default::default()
    };
    match docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
    {
        Ok(created) => {
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            docker.remove_container(&created.id, Some(options)).await?;
            Ok(true)
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        }) => match status_code {
            404 => Ok(true),
            // The reference's own faults; any other 400 ("No command specified") came after
            // the engine had found the image.
            400 => Ok(!(message.contains("reference format") || message.contains("digest"))),
            _ => bail!("the engine answered {status_code} for `{reference}`: {message}"),
        },
        Err(e) => Err(e.into()),
    }
}

/// A reference made of the pieces the grammar distinguishes, often slightly wrong.
fn random_reference(rng: &mut Rng) -> String {
    let n = rng.range(1, 7);
    let mut s: String = (0..n)
        .map(|_| IMAGE_REFERENCE_PIECES[rng.below(IMAGE_REFERENCE_PIECES.len())])
        .collect();
    if rng.below(8) == 0 {
        s.push_str(&"0123456789abcdef".repeat(4)[..rng.range(30, 65)]);
    }
    s
}

#[tokio::test]
async fn cube_and_docker_agree_on_image_references() -> Result<()> {
    let docker = Docker::connect_with_local_defaults()?;
    let mut rng = Rng::from_env_or_random("CUBE_IMAGE_REFS_SEED");
    let mut references: Vec<String> = VALID_IMAGES
        .iter()
        .chain(INVALID_IMAGES)
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .collect();
    references.extend((0..400).map(|_| random_reference(&mut rng)));
    let mut disagreements = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for reference in &references {
        // Hex digits alone may be (the start of) an image's id, which the engine looks up
        // before it parses a name.
        if reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let engine = engine_accepts(&docker, reference).await?;
        let cube = validate_image(reference);
        if engine {
            accepted += 1;
        } else {
            refused += 1;
        }
        if engine != cube.is_ok() {
            disagreements.push(format!("`{reference}`: engine {engine}, cube {cube:?}"));
        }
    }
    eprintln!("{accepted} references accepted and {refused} refused by the engine");
    assert!(
        accepted > 20 && refused > 20,
        "the corpus must hold both kinds"
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    Ok(())
}
