package config

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/go-viper/mapstructure/v2"
)

var textUnmarshaler = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()

// decode converts a raw value (a string from the environment or a flag, or whatever the
// TOML parser made of the file) into the setting's type, by the same rules for all three:
// durations from "15s", lists from "a,b" or a TOML array, numbers from text, and any type
// with UnmarshalText (levels, compiled patterns) through it, so a bad value is refused here.
func decode(raw any, dst reflect.Value) error {
	target := reflect.New(dst.Type())
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			listToText,
			mapstructure.TextUnmarshallerHookFunc(),
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		),
		WeaklyTypedInput: true,
		Result:           target.Interface(),
	})
	if err != nil {
		return err
	}
	if err := dec.Decode(raw); err != nil {
		return unwrapDecode(err)
	}
	dst.Set(target.Elem())
	return nil
}

// listToText lets a TOML array fill a type that reads a comma-separated text.
func listToText(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.Slice || !reflect.PointerTo(to).Implements(textUnmarshaler) {
		return data, nil
	}
	var parts []string
	v := reflect.ValueOf(data)
	for i := 0; i < v.Len(); i++ {
		parts = append(parts, fmt.Sprint(v.Index(i).Interface()))
	}
	return strings.Join(parts, ","), nil
}

// unwrapDecode keeps the reason of mapstructure's error and drops its framing (the key
// is named by the FieldError around it).
func unwrapDecode(err error) error {
	var de *mapstructure.DecodeError
	if errors.As(err, &de) && de.Unwrap() != nil {
		return de.Unwrap()
	}
	return err
}
