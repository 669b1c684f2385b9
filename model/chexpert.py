"""The 14 CheXpert observations, shared by the testbed, the labeler, the rewards and eval."""

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
"""Label values; ``None`` means the observation is not mentioned."""
