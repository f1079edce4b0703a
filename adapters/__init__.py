"""Infrastructure shared by activities, interfaces, projections and api: settings and storage."""
