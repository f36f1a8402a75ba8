"""What the protocol asks: the preference categories and their options, the persona prompt,
and the misalignment questions. Plain data with no model in sight, at the bottom of the house."""
