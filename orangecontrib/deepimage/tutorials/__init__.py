"""Example workflows (``.ows``) shown in Orange's example browser."""
