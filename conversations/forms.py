"""Forms of the chat pages (validation of what a browser posts; the services decide the rest)."""

from django import forms


class PersonaForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True)
    system_prompt = forms.CharField(
        label="System prompt", max_length=20_000, widget=forms.Textarea(attrs={"rows": 8}), strip=False
    )

    def clean_system_prompt(self) -> str:
        value = self.cleaned_data["system_prompt"]
        if not value.strip():
            raise forms.ValidationError("Write the instructions the model gets at the start of each conversation.")
        return value


class ConversationStartForm(forms.Form):
    model = forms.CharField(max_length=100, required=False)
    persona = forms.UUIDField(required=False)
